"""The emulator's aiohttp server: both protocols, limits, latency, faults, counters.

Written against the providers' published protocols, sharing no code with `teacher/`, so a
misunderstanding cannot hide in both. Routes::

    POST /v1/chat/completions     OpenAI Chat Completions (base_url = http://HOST:PORT/v1)
    POST /v1/messages             Anthropic Messages      (base_url = http://HOST:PORT)
    GET  /v1/models               OpenAI model list (one model, for compatibility probes)
    GET  /_emulator/counters      JSON counters (see `Counters.snapshot`)
    POST /_emulator/reset         zero the counters
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from amr_async.emulator.bank import Bank
from amr_async.emulator.config import EmulatorConfig
from amr_async.emulator.limits import Admission, Refusal, RouteLimits, WindowState
from amr_async.emulator.scripted import ScriptedTeacher, UnknownKindError, stable_unit

OPENAI_ROUTE = "/v1/chat/completions"
ANTHROPIC_ROUTE = "/v1/messages"
DEFAULT_MAX_TOKENS = 4096  # OpenAI's when the body names none
CHARS_PER_TOKEN = 4  # token estimate: ceil(chars / 4), plus 4 per message


def estimate_tokens(text: str) -> int:
    """The emulator's token estimate: ceil(len(text) / 4). Not a real tokenizer."""
    return -(-len(text) // CHARS_PER_TOKEN)


class Counters:
    """What the server saw, for tests and benchmarks to assert on."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.rate_limited = 0
        self.faults: defaultdict[str, int] = defaultdict(int)
        self.input_tokens = 0
        self.output_tokens = 0
        self.body_hashes: defaultdict[str, int] = defaultdict(int)

    def snapshot(self) -> dict[str, Any]:
        """Counters as JSON-ready data.

        Keys: `requests` {route: {status: n}} (status "reset" for dropped connections),
        `rate_limited` (429s sent), `faults` {kind: n}, `tokens` {input, output} (answered
        requests), `body_hashes` {blake2b-128 hex of the raw body: times seen}.
        """
        return {
            "requests": {r: dict(s) for r, s in self.requests.items()},
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "body_hashes": dict(self.body_hashes),
        }


def body_hash(raw: bytes) -> str:
    """The hash the counters key request bodies by: blake2b, 16 bytes, hex."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class BadRequest(Exception):
    """A request the real API would refuse with 400."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(slots=True)
class _Parsed:
    model: str
    prompt_text: str  # everything, for the scripted teacher to read markers from
    question: str  # the last user message
    max_tokens: int
    stop: list[str]
    input_tokens: int


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("text", ""), str):
                raise BadRequest(f"{where}[{j}]: expected a content block object", where)
            if block.get("type") == "text":
                parts.append(block["text"])
        return "\n".join(parts)
    if content is None:
        return ""
    raise BadRequest(f"{where}: expected a string or a list of content blocks", where)


def _go_duration(seconds: float) -> str:
    """Format like OpenAI's reset headers: `9ms`, `1.5s`, `6m0s`."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    rest_s = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{rest_s}" if minutes else rest_s


def _rfc3339(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(wall)))


class Emulator:
    """A local teacher server speaking OpenAI Chat Completions and Anthropic Messages.

    A TEST DOUBLE: answers come from `ScriptedTeacher`, never from a model.

    Args:
        config: limits, latency, faults and content settings.
        bank: the task bank; loaded from `config.bank_paths` (plus HumanEval) when None.
        clock: monotonic seconds for the rate-limit windows.
        wall_clock: POSIX seconds for timestamps and Anthropic's reset instants.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        bank: Bank | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config or EmulatorConfig()
        self.bank = bank or Bank.load(config.bank_paths)
        self.teacher = ScriptedTeacher(self.bank, seed=config.seed, bug_rate=config.bug_rate)
        self.counters = Counters()
        self._wall = wall_clock
        lim = config.limits
        self.openai_limits = RouteLimits(
            rpm=lim.rpm,
            tpm=lim.tpm,
            itpm=None,
            otpm=None,
            max_concurrency=lim.max_concurrency,
            clock=clock,
        )
        self.anthropic_limits = RouteLimits(
            rpm=lim.rpm,
            tpm=None,
            itpm=lim.itpm or lim.tpm,
            otpm=lim.otpm or lim.tpm,
            max_concurrency=lim.max_concurrency,
            clock=clock,
        )
        self._ids = itertools.count(1)
        self._answers: dict[str, str] = {}
        self._fault_table = [(k, r) for k, r in config.faults.items() if r > 0]

    # ----------------------------------------------------------------- app

    def make_app(self) -> web.Application:
        """The aiohttp application (routes in the module docstring)."""
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post(OPENAI_ROUTE, self._openai)
        app.router.add_post(ANTHROPIC_ROUTE, self._anthropic)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_emulator/counters", self._counters)
        app.router.add_post("/_emulator/reset", self._reset)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def _counters(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self.counters.snapshot()), content_type="application/json"
        )

    async def _reset(self, request: web.Request) -> web.Response:
        self.counters.reset()
        return web.Response(body=b"{}", content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        body = {
            "object": "list",
            "data": [{"id": "emulator", "object": "model", "created": 0, "owned_by": "amr-async"}],
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _not_found(self, request: web.Request) -> web.Response:
        route = "unknown"
        self.counters.requests[route]["404"] += 1
        if request.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"Not found: {request.path}"},
            }
        else:
            body = {
                "error": {
                    "message": f"Invalid URL ({request.method} {request.path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        return web.Response(status=404, body=orjson.dumps(body), content_type="application/json")

    # ------------------------------------------------------------ shared flow

    def _fault(self, digest: str, seen: int) -> str | None:
        if not self._fault_table:
            return None
        u = stable_unit(self.config.seed, "fault", digest, seen)
        acc = 0.0
        for kind, rate in self._fault_table:
            acc += rate
            if u < acc:
                return kind
        return None

    def _answer(self, digest: str, parsed: _Parsed) -> str:
        text = self._answers.get(digest)
        if text is None:
            text = self.teacher.answer(parsed.prompt_text, parsed.question)
            if len(self._answers) >= 4096:
                self._answers.clear()
            self._answers[digest] = text
        return text

    async def _handle(self, request: web.Request, proto: _Protocol) -> web.StreamResponse:
        raw = await request.read()
        digest = body_hash(raw)
        counters = self.counters
        counters.body_hashes[digest] += 1
        seen = counters.body_hashes[digest]
        route = proto.route

        def reply(resp: web.StreamResponse) -> web.StreamResponse:
            counters.requests[route][str(resp.status)] += 1
            if resp.status == 429:
                counters.rate_limited += 1
            return resp

        auth = proto.check_auth(request, self.config.api_key)
        if auth is not None:
            return reply(auth)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return reply(proto.bad_json())
        try:
            parsed = proto.parse(data, request)
            if parsed.input_tokens > self.config.context_window:
                raise proto.context_error(parsed.input_tokens, self.config.context_window)
            answer_text = self._answer(digest, parsed)
        except BadRequest as exc:
            return reply(proto.bad_request(exc))
        except UnknownKindError as exc:
            return reply(proto.bad_request(BadRequest(str(exc), "messages")))

        limits = proto.limits
        admitted = limits.admit(proto.charges(parsed))
        if isinstance(admitted, Refusal):
            return reply(proto.rate_limited(admitted, parsed, self._headers(proto)))
        admission: Admission = admitted
        output_tokens: int | None = None
        try:
            fault = self._fault(digest, seen)
            if fault is not None:
                counters.faults[fault] += 1
            if fault in ("server_error", "overloaded", "rate_limit", "insufficient_quota"):
                return reply(proto.fault_error(fault, self._headers(proto)))

            text, finish = answer_text, "stop"
            for s in parsed.stop:
                cut = text.find(s) if s else -1
                if cut >= 0:
                    text, finish = text[:cut], "stop_sequence"
            output_tokens = estimate_tokens(text)
            if output_tokens > parsed.max_tokens or fault == "finish_length":
                limit = (
                    parsed.max_tokens if output_tokens > parsed.max_tokens else output_tokens // 2
                )
                text = text[: limit * CHARS_PER_TOKEN]
                output_tokens, finish = estimate_tokens(text), "length"

            delay = self.config.latency.draw(
                stable_unit(self.config.seed, "latency", digest, seen), output_tokens
            )
            if fault == "hang":
                delay = max(delay, self.config.hang_s)
            if delay > 0:
                await asyncio.sleep(delay)

            request_id = f"req_emu{next(self._ids):016x}"
            body = orjson.dumps(
                proto.success(parsed, text, finish, output_tokens, request_id, self._wall())
            )
            headers = self._headers(proto)
            headers[proto.request_id_header] = request_id
            if fault == "connection_reset":
                return await self._reset_midway(request, body, headers, route)
            if fault == "malformed_json":
                body = body[: len(body) // 3] + b"<html><body>502 Bad Gateway</body></html>"
            elif fault == "truncated_body":
                body = body[: len(body) // 2]
            counters.input_tokens += parsed.input_tokens
            counters.output_tokens += output_tokens
            return reply(web.Response(body=body, headers=headers, content_type="application/json"))
        finally:
            limits.finish(admission, output_tokens)

    async def _reset_midway(
        self, request: web.Request, body: bytes, headers: dict[str, str], route: str
    ) -> web.StreamResponse:
        """Send headers and half the body, then drop the connection."""
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        self.counters.requests[route]["reset"] += 1
        transport = request.transport
        if transport is not None:
            transport.abort()
        return resp

    def _headers(self, proto: _Protocol) -> dict[str, str]:
        return proto.limit_headers(self._wall())

    # ------------------------------------------------------------- routes

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, _OpenAI(self.openai_limits))

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, _Anthropic(self.anthropic_limits))


# ---------------------------------------------------------------- protocols


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), headers=headers, content_type="application/json"
    )


class _Protocol:
    route: str
    request_id_header: str

    def __init__(self, limits: RouteLimits) -> None:
        self.limits = limits

    def check_auth(self, request: web.Request, key: str | None) -> web.Response | None:
        raise NotImplementedError

    def bad_json(self) -> web.Response:
        raise NotImplementedError

    def parse(self, data: Any, request: web.Request) -> _Parsed:
        raise NotImplementedError

    def context_error(self, tokens: int, window: int) -> BadRequest:
        raise NotImplementedError

    def bad_request(self, exc: BadRequest) -> web.Response:
        raise NotImplementedError

    def charges(self, parsed: _Parsed) -> dict[str, int]:
        raise NotImplementedError

    def rate_limited(
        self, refusal: Refusal, parsed: _Parsed, headers: dict[str, str]
    ) -> web.Response:
        raise NotImplementedError

    def fault_error(self, fault: str, headers: dict[str, str]) -> web.Response:
        raise NotImplementedError

    def success(
        self, parsed: _Parsed, text: str, finish: str, out: int, rid: str, wall: float
    ) -> dict[str, Any]:
        raise NotImplementedError

    def limit_headers(self, wall: float) -> dict[str, str]:
        raise NotImplementedError


def _max_tokens(value: Any, name: str, default: int | None) -> int:
    if value is None:
        if default is None:
            raise BadRequest(f"{name}: Field required", name)
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"Invalid type for '{name}': expected an integer", name, "invalid_type")
    if value < 1:
        raise BadRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return value


def _stop_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise BadRequest(f"Invalid type for '{name}': expected a string or an array of strings", name)


class _OpenAI(_Protocol):
    route = OPENAI_ROUTE
    request_id_header = "x-request-id"

    def check_auth(self, request: web.Request, key: str | None) -> web.Response | None:
        if key is None:
            return None
        given = request.headers.get("Authorization", "")
        if given == f"Bearer {key}":
            return None
        message = (
            "You didn't provide an API key."
            if not given
            else "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return _json(401, self._error(message, "invalid_request_error", None, "invalid_api_key"))

    @staticmethod
    def _error(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def bad_json(self) -> web.Response:
        return _json(
            400,
            self._error(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
                "invalid_request_error",
                None,
                None,
            ),
        )

    def bad_request(self, exc: BadRequest) -> web.Response:
        return _json(400, self._error(exc.message, "invalid_request_error", exc.param, exc.code))

    def context_error(self, tokens: int, window: int) -> BadRequest:
        return BadRequest(
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages.",
            "messages",
            "context_length_exceeded",
        )

    def parse(self, data: Any, request: web.Request) -> _Parsed:
        if not isinstance(data, dict):
            raise BadRequest("Invalid request body: expected a JSON object.")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        messages = data.get("messages")
        if messages is None:
            raise BadRequest(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        if not isinstance(messages, list):
            raise BadRequest("Invalid type for 'messages': expected an array.", "messages")
        if not messages:
            raise BadRequest(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "messages",
                "empty_array",
            )
        texts: list[str] = []
        question = ""
        for i, msg in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(msg, dict):
                raise BadRequest(f"Invalid type for '{where}': expected an object.", where)
            role = msg.get("role")
            if role not in ("system", "developer", "user", "assistant", "tool"):
                raise BadRequest(
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                    "'user', 'tool', and 'developer'.",
                    f"{where}.role",
                    "invalid_value",
                )
            text = _content_text(msg.get("content"), f"{where}.content")
            texts.append(text)
            if role == "user":
                question = text
        token_value = data.get("max_completion_tokens", data.get("max_tokens"))
        name = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
        max_tokens = _max_tokens(token_value, name, DEFAULT_MAX_TOKENS)
        if data.get("stream"):
            raise BadRequest("stream=true is not supported by the amr-async emulator", "stream")
        prompt_text = "\n".join(texts)
        input_tokens = estimate_tokens(prompt_text) + 4 * len(messages)
        return _Parsed(
            model,
            prompt_text,
            question,
            max_tokens,
            _stop_list(data.get("stop"), "stop"),
            input_tokens,
        )

    def charges(self, parsed: _Parsed) -> dict[str, int]:
        # OpenAI charges the prompt estimate plus max_tokens on admission.
        return {"requests": 1, "tokens": parsed.input_tokens + parsed.max_tokens}

    def rate_limited(
        self, refusal: Refusal, parsed: _Parsed, headers: dict[str, str]
    ) -> web.Response:
        wait = max(refusal.retry_after_s, 0.001)
        if refusal.limit_name == "concurrency":
            message = f"Too many concurrent requests: limit {refusal.limit}. Please retry shortly."
            type_ = "requests"
        else:
            unit = (
                "requests per min (RPM)"
                if refusal.limit_name == "requests"
                else "tokens per min (TPM)"
            )
            type_ = "requests" if refusal.limit_name == "requests" else "tokens"
            message = (
                f"Rate limit reached for {parsed.model} in organization org-emulator on {unit}: "
                f"Limit {refusal.limit}. Please try again in {_go_duration(wait)}. "
                "Visit https://platform.openai.com/account/rate-limits to learn more."
            )
        headers["retry-after"] = str(math.ceil(wait))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        return _json(429, self._error(message, type_, None, "rate_limit_exceeded"), headers)

    def fault_error(self, fault: str, headers: dict[str, str]) -> web.Response:
        if fault == "server_error":
            return _json(
                500,
                self._error(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                    None,
                ),
                headers,
            )
        if fault == "overloaded":
            return _json(
                503,
                self._error(
                    "The engine is currently overloaded, please try again later.",
                    "server_error",
                    None,
                    None,
                ),
                headers,
            )
        if fault == "rate_limit":
            headers["retry-after"] = "1"
            headers["retry-after-ms"] = "1000"
            return _json(
                429,
                self._error(
                    "Rate limit reached for requests. Please try again in 1s.",
                    "requests",
                    None,
                    "rate_limit_exceeded",
                ),
                headers,
            )
        return _json(
            429,
            self._error(
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            ),
            headers,
        )

    def success(
        self, parsed: _Parsed, text: str, finish: str, out: int, rid: str, wall: float
    ) -> dict[str, Any]:
        return {
            "id": "chatcmpl-" + rid.removeprefix("req_"),
            "object": "chat.completion",
            "created": int(wall),
            "model": parsed.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop" if finish == "stop_sequence" else finish,
                }
            ],
            "usage": {
                "prompt_tokens": parsed.input_tokens,
                "completion_tokens": out,
                "total_tokens": parsed.input_tokens + out,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": "fp_amr_async_emulator",
        }

    def limit_headers(self, wall: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name in ("requests", "tokens"):
            state = self.limits.state(name)
            if state is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(state.limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{name}"] = _go_duration(state.reset_s)
        return headers


class _Anthropic(_Protocol):
    route = ANTHROPIC_ROUTE
    request_id_header = "request-id"

    @staticmethod
    def _error(type_: str, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": type_, "message": message}}

    def check_auth(self, request: web.Request, key: str | None) -> web.Response | None:
        if key is not None:
            given = request.headers.get("x-api-key")
            if given is None:
                return _json(
                    401, self._error("authentication_error", "x-api-key header is required")
                )
            if given != key:
                return _json(401, self._error("authentication_error", "invalid x-api-key"))
        if "anthropic-version" not in request.headers:
            return _json(
                400, self._error("invalid_request_error", "anthropic-version: header is required")
            )
        return None

    def bad_json(self) -> web.Response:
        return _json(
            400,
            self._error(
                "invalid_request_error",
                "There was an error parsing the body of your request: it is not valid JSON.",
            ),
        )

    def bad_request(self, exc: BadRequest) -> web.Response:
        return _json(400, self._error("invalid_request_error", exc.message))

    def context_error(self, tokens: int, window: int) -> BadRequest:
        return BadRequest(f"prompt is too long: {tokens} tokens > {window} maximum", "messages")

    def parse(self, data: Any, request: web.Request) -> _Parsed:
        if not isinstance(data, dict):
            raise BadRequest("Input should be a valid dictionary")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required", "model")
        max_tokens = _max_tokens(data.get("max_tokens"), "max_tokens", None)
        messages = data.get("messages")
        if messages is None:
            raise BadRequest("messages: Field required", "messages")
        if not isinstance(messages, list):
            raise BadRequest("messages: Input should be a valid list", "messages")
        if not messages:
            raise BadRequest("messages: at least one message is required", "messages")
        texts = [_content_text(data.get("system"), "system")]
        question = ""
        for i, msg in enumerate(messages):
            where = f"messages.{i}"
            if not isinstance(msg, dict):
                raise BadRequest(f"{where}: Input should be a valid dictionary", where)
            role = msg.get("role")
            if role not in ("user", "assistant"):
                raise BadRequest(
                    f"{where}.role: Input should be 'user' or 'assistant'", f"{where}.role"
                )
            text = _content_text(msg.get("content"), f"{where}.content")
            texts.append(text)
            if role == "user":
                question = text
        if data.get("stream"):
            raise BadRequest("stream: streaming is not supported by the amr-async emulator")
        prompt_text = "\n".join(texts)
        input_tokens = estimate_tokens(prompt_text) + 4 * len(messages)
        stop = _stop_list(data.get("stop_sequences"), "stop_sequences")
        return _Parsed(model, prompt_text, question, max_tokens, stop, input_tokens)

    def charges(self, parsed: _Parsed) -> dict[str, int]:
        # Output is reserved at max_tokens on admission and settled when the answer is done.
        return {
            "requests": 1,
            "input_tokens": parsed.input_tokens,
            "output_tokens": parsed.max_tokens,
        }

    def rate_limited(
        self, refusal: Refusal, parsed: _Parsed, headers: dict[str, str]
    ) -> web.Response:
        wait = max(refusal.retry_after_s, 0.001)
        if refusal.limit_name == "concurrency":
            message = (
                "Number of concurrent connections has exceeded your rate limit "
                f"({refusal.limit}). Please try again later."
            )
        else:
            what = {
                "requests": "requests per minute",
                "input_tokens": "input tokens per minute",
                "output_tokens": "output tokens per minute",
            }[refusal.limit_name]
            message = (
                "This request would exceed the rate limit for your organization of "
                f"{refusal.limit} {what}. Please reduce the prompt length or the maximum "
                "tokens requested, or try again later."
            )
        headers["retry-after"] = str(math.ceil(wait))
        return _json(429, self._error("rate_limit_error", message), headers)

    def fault_error(self, fault: str, headers: dict[str, str]) -> web.Response:
        if fault == "server_error":
            return _json(500, self._error("api_error", "Internal server error"), headers)
        if fault == "overloaded":
            return _json(529, self._error("overloaded_error", "Overloaded"), headers)
        if fault == "rate_limit":
            headers["retry-after"] = "1"
            return _json(
                429,
                self._error("rate_limit_error", "Number of requests has exceeded your rate limit."),
                headers,
            )
        return _json(
            400,
            self._error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.",
            ),
            headers,
        )

    def success(
        self, parsed: _Parsed, text: str, finish: str, out: int, rid: str, wall: float
    ) -> dict[str, Any]:
        stop_reason = {"stop": "end_turn", "length": "max_tokens"}.get(finish, finish)
        stop_sequence = None
        if finish == "stop_sequence":
            stop_sequence = next((s for s in parsed.stop if s), None)
        return {
            "id": "msg_" + rid.removeprefix("req_"),
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": parsed.input_tokens,
                "output_tokens": out,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def limit_headers(self, wall: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        p = "anthropic-ratelimit-"
        states: dict[str, WindowState] = {}
        for name, header in (
            ("requests", "requests"),
            ("input_tokens", "input-tokens"),
            ("output_tokens", "output-tokens"),
        ):
            state = self.limits.state(name)
            if state is None:
                continue
            states[name] = state
            headers[f"{p}{header}-limit"] = str(state.limit)
            headers[f"{p}{header}-remaining"] = str(state.remaining)
            headers[f"{p}{header}-reset"] = _rfc3339(wall + state.reset_s)
        token_states = [s for n, s in states.items() if n != "requests"]
        if token_states:
            # The combined token headers report the most restrictive limit in effect.
            tight = min(token_states, key=lambda s: s.remaining)
            headers[f"{p}tokens-limit"] = str(tight.limit)
            headers[f"{p}tokens-remaining"] = str(tight.remaining)
            headers[f"{p}tokens-reset"] = _rfc3339(wall + tight.reset_s)
        return headers


# ------------------------------------------------------------------ running


@dataclass(slots=True, frozen=True)
class RunningEmulator:
    """A started emulator.

    Attributes:
        emulator: the server object (its `counters` can be read directly in-process).
        host, port: where it listens.
    """

    emulator: Emulator
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """Server root; the Anthropic base_url."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url


@asynccontextmanager
async def serve(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    bank: Bank | None = None,
) -> AsyncIterator[RunningEmulator]:
    """Run an emulator on the current loop for the duration of the block.

    Args:
        config: see `EmulatorConfig`.
        host: interface to bind; loopback unless told otherwise.
        port: 0 picks a free ephemeral port.
        bank: a preloaded task bank (loaded off the loop when None).

    Yields:
        The running emulator with its base URLs.
    """
    config = config or EmulatorConfig()
    if bank is None:
        bank = await asyncio.to_thread(Bank.load, config.bank_paths)
    emulator = Emulator(config, bank=bank)
    # handler_cancellation: a client that times out and hangs up frees its handler (hangs).
    runner = web.AppRunner(
        emulator.make_app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield RunningEmulator(emulator, host, bound_port)
    finally:
        await runner.cleanup()
