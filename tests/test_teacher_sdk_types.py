"""Oracle: bodies built from the official SDKs' own types parse in our clients.

The emulator is one reading of the protocols; the SDK types are another. Our decoders
must read every field we use from a body the SDK's models describe.
"""

from __future__ import annotations

from anthropic.types import Message as AnthropicMessage
from multidict import CIMultiDict, CIMultiDictProxy
from openai.types.chat import ChatCompletion

from amr_async.teacher import AnthropicClient, OpenAIClient, OutcomeKind


def _headers(**kw: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()}))


def test_openai_completion_from_sdk_types() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-x",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "```python\nx = 1\n```"},
                    "finish_reason": "length",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 64},
            },
        }
    )
    raw = completion.model_dump_json(exclude_unset=True).encode()
    client = OpenAIClient(base_url="http://127.0.0.1:9/v1", api_key="k")
    out = client._decode(200, _headers(x_request_id="req_9"), raw, 0.5)
    assert out.kind is OutcomeKind.TRUNCATED
    assert out.text == "```python\nx = 1\n```"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (120, 30)
    assert out.usage.cached_input_tokens == 64
    assert out.request_id == "req_9"


def test_openai_null_content_is_empty_text() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "refusal": "no"},
                    "finish_reason": "content_filter",
                }
            ],
        }
    )
    client = OpenAIClient(base_url="http://127.0.0.1:9/v1", api_key="k")
    out = client._decode(200, _headers(), completion.model_dump_json().encode(), 0.1)
    assert out.kind is OutcomeKind.OK
    assert out.text == ""
    assert out.finish_reason == "content_filter"


def test_anthropic_message_from_sdk_types() -> None:
    message = AnthropicMessage.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "text", "text": "part one, "},
                {"type": "text", "text": "part two"},
            ],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 50,
                "output_tokens": 20,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 200,
            },
        }
    )
    client = AnthropicClient(base_url="http://127.0.0.1:9", api_key="k")
    raw = message.model_dump_json().encode()
    out = client._decode(200, _headers(request_id="req_a"), raw, 0.2)
    assert out.kind is OutcomeKind.OK
    assert out.text == "part one, part two"
    assert out.usage.cached_input_tokens == 1000
    assert out.usage.cache_creation_tokens == 200
    assert out.request_id == "req_a"


BAD_BODIES = [
    b"{}",
    b'{"choices": []}',
    b'{"choices": ["x"]}',
    b'{"choices": [{"message": "x"}]}',
    b'{"content": ["x"], "stop_reason": "end_turn"}',
    b'{"content": 5}',
    b"[]",
    b"null",
    b"\xff",
    b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}',
]


def test_missing_fields_are_malformed_not_exceptions() -> None:
    oc = OpenAIClient(base_url="http://127.0.0.1:9/v1", api_key="k")
    ac = AnthropicClient(base_url="http://127.0.0.1:9", api_key="k")
    for body in BAD_BODIES:
        assert oc._decode(200, _headers(), body, 0).kind is OutcomeKind.MALFORMED_RESPONSE
        assert ac._decode(200, _headers(), body, 0).kind is OutcomeKind.MALFORMED_RESPONSE
    # An error status with an unreadable body is still classified by status.
    assert oc._decode(503, _headers(), b"<html>", 0).kind is OutcomeKind.OVERLOADED
    assert ac._decode(529, _headers(), b"", 0).kind is OutcomeKind.OVERLOADED


def test_openai_compatible_error_shapes() -> None:
    oc = OpenAIClient(base_url="http://127.0.0.1:9/v1", api_key="k")
    vllm = (
        b'{"object": "error", "message": "max_tokens too large", "type": "BadRequestError",'
        b' "param": null, "code": 400}'
    )
    out = oc._decode(400, _headers(), vllm, 0)
    assert out.kind is OutcomeKind.INVALID_REQUEST
    assert "max_tokens too large" in (out.error or "")
    ollama = b'{"error": "model \'llama9\' not found"}'
    out = oc._decode(404, _headers(), ollama, 0)
    assert out.kind is OutcomeKind.INVALID_REQUEST
    assert "llama9" in (out.error or "")
    llamacpp = b'{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}'
    out = oc._decode(503, _headers(), llamacpp, 0)
    assert out.kind is OutcomeKind.OVERLOADED
    assert "Loading model" in (out.error or "")
