"""Contract: the official `openai` and `anthropic` SDKs (max_retries=0) against the emulator.

They must parse every success body and raise the right typed exception, with status and
retry-after, for every error kind; our own clients are checked on the same responses in
test_teacher_clients.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anthropic
import openai
import pytest

from amr_async.emulator import EmulatorConfig, FaultRates, Limits, RunningEmulator

StartEmulator = Callable[..., Awaitable[RunningEmulator]]
PROMPT = "### TASK: direct\nImplement def below_zero(operations: List[int]) -> bool"


def _openai(running: RunningEmulator, **kw: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=running.openai_base_url,
        api_key="sk-test",
        max_retries=0,
        **kw,  # type: ignore[arg-type]
    )


def _anthropic(running: RunningEmulator, **kw: object) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=running.anthropic_base_url,
        api_key="sk-ant-test",
        max_retries=0,
        **kw,  # type: ignore[arg-type]
    )


async def _openai_call(client: openai.AsyncOpenAI, max_tokens: int = 1000):  # type: ignore[no-untyped-def]
    return await client.chat.completions.create(
        model="gpt-emu",
        messages=[
            {"role": "system", "content": "You are a professional coder."},
            {"role": "user", "content": PROMPT},
        ],
        max_tokens=max_tokens,
        temperature=0,
    )


async def _anthropic_call(client: anthropic.AsyncAnthropic, max_tokens: int = 1000):  # type: ignore[no-untyped-def]
    return await client.messages.create(
        model="claude-emu",
        system="You are a professional coder.",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
    )


async def test_openai_sdk_success(emulator: RunningEmulator) -> None:
    async with _openai(emulator) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-emu", messages=[{"role": "user", "content": PROMPT}], max_tokens=1000
        )
        completion = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    content = completion.choices[0].message.content or ""
    assert "def below_zero" in content
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion._request_id == raw.headers["x-request-id"]


async def test_anthropic_sdk_success(emulator: RunningEmulator) -> None:
    async with _anthropic(emulator) as client:
        message = await _anthropic_call(client)
    assert message.type == "message"
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text"
    assert "def below_zero" in block.text
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert message._request_id is not None
    assert message._request_id.startswith("req_")


async def test_sdks_see_length_truncation(emulator: RunningEmulator) -> None:
    async with _openai(emulator) as oc:
        completion = await _openai_call(oc, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 5
    async with _anthropic(emulator) as ac:
        message = await _anthropic_call(ac, max_tokens=5)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens <= 5


OPENAI_ERRORS = [
    ("server_error", openai.InternalServerError, 500),
    ("overloaded", openai.InternalServerError, 503),
    ("rate_limit", openai.RateLimitError, 429),
    ("insufficient_quota", openai.RateLimitError, 429),
]


@pytest.mark.parametrize(("fault", "exc_type", "status"), OPENAI_ERRORS)
async def test_openai_sdk_errors(
    fault: str, exc_type: type[openai.APIStatusError], status: int, start_emulator: StartEmulator
) -> None:
    running = await start_emulator(faults=FaultRates(**{fault: 1.0}))
    async with _openai(running) as client:
        with pytest.raises(exc_type) as info:
            await _openai_call(client)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict)
    assert "message" in body
    assert "type" in body
    if fault == "rate_limit":
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.code == "rate_limit_exceeded"
    if fault == "insufficient_quota":
        assert info.value.code == "insufficient_quota"


ANTHROPIC_ERRORS = [
    ("server_error", anthropic.InternalServerError, 500, "api_error"),
    ("overloaded", anthropic.OverloadedError, 529, "overloaded_error"),
    ("rate_limit", anthropic.RateLimitError, 429, "rate_limit_error"),
    ("insufficient_quota", anthropic.BadRequestError, 400, "invalid_request_error"),
]


@pytest.mark.parametrize(("fault", "exc_type", "status", "err_type"), ANTHROPIC_ERRORS)
async def test_anthropic_sdk_errors(
    fault: str,
    exc_type: type[anthropic.APIStatusError],
    status: int,
    err_type: str,
    start_emulator: StartEmulator,
) -> None:
    running = await start_emulator(faults=FaultRates(**{fault: 1.0}))
    async with _anthropic(running) as client:
        with pytest.raises(exc_type) as info:
            await _anthropic_call(client)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == err_type
    if fault == "rate_limit":
        assert info.value.response.headers["retry-after"] == "1"


async def test_sdks_on_real_rate_limit(start_emulator: StartEmulator) -> None:
    running = await start_emulator(limits=Limits(rpm=1))
    async with _openai(running) as oc:
        await _openai_call(oc)
        with pytest.raises(openai.RateLimitError) as oinfo:
            await _openai_call(oc)
    headers = oinfo.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    async with _anthropic(running) as ac:
        await _anthropic_call(ac)
        with pytest.raises(anthropic.RateLimitError) as ainfo:
            await _anthropic_call(ac)
    aheaders = ainfo.value.response.headers
    assert int(aheaders["retry-after"]) >= 1
    assert aheaders["anthropic-ratelimit-requests-remaining"] == "0"


@pytest.mark.parametrize("fault", ["connection_reset", "truncated_body"])
async def test_sdks_on_broken_transport(fault: str, start_emulator: StartEmulator) -> None:
    running = await start_emulator(faults=FaultRates(**{fault: 1.0}))
    async with _openai(running) as oc:
        with pytest.raises(
            (openai.APIConnectionError, openai.APIResponseValidationError, ValueError)
        ):
            await _openai_call(oc)
    async with _anthropic(running) as ac:
        with pytest.raises(
            (anthropic.APIConnectionError, anthropic.APIResponseValidationError, ValueError)
        ):
            await _anthropic_call(ac)


async def test_sdks_time_out_on_hang(start_emulator: StartEmulator) -> None:
    running = await start_emulator(faults=FaultRates(hang=1.0), hang_s=30.0)
    async with _openai(running, timeout=0.3) as oc:
        with pytest.raises(openai.APITimeoutError):
            await _openai_call(oc)
    async with _anthropic(running, timeout=0.3) as ac:
        with pytest.raises(anthropic.APITimeoutError):
            await _anthropic_call(ac)


async def test_sdks_on_wrong_key(start_emulator: StartEmulator) -> None:
    running = await start_emulator(EmulatorConfig(api_key="sk-right"))
    async with _openai(running) as oc:
        with pytest.raises(openai.AuthenticationError) as oinfo:
            await _openai_call(oc)
    assert oinfo.value.code == "invalid_api_key"
    async with _anthropic(running) as ac:
        with pytest.raises(anthropic.AuthenticationError):
            await _anthropic_call(ac)


async def test_openai_sdk_bad_requests(emulator: RunningEmulator) -> None:
    async with _openai(emulator) as client:
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="m", messages=[])
        assert empty.value.code == "empty_array"
        assert empty.value.param == "messages"
        with pytest.raises(openai.BadRequestError) as no_model:
            await client.chat.completions.create(
                model="", messages=[{"role": "user", "content": "hi"}]
            )
        assert "model" in no_model.value.message
        with pytest.raises(openai.BadRequestError) as bad_tokens:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=0
            )
        assert bad_tokens.value.code == "integer_below_min_value"
        with pytest.raises(openai.BadRequestError) as bad_kind:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "### TASK: nonsense\nhi"}]
            )
        assert "unknown prompt kind" in bad_kind.value.message


async def test_anthropic_sdk_bad_requests(emulator: RunningEmulator) -> None:
    async with _anthropic(emulator) as client:
        with pytest.raises(anthropic.BadRequestError) as empty:
            await client.messages.create(model="m", messages=[], max_tokens=10)
        assert "at least one message" in empty.value.message
        with pytest.raises(anthropic.BadRequestError) as role:
            await client.messages.create(
                model="m",
                messages=[{"role": "system", "content": "x"}],  # type: ignore[list-item,misc]
                max_tokens=10,
            )
        assert "role" in role.value.message
