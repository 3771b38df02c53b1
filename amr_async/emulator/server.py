"""The emulator's server: routes, limits, latency, faults, counters.

Written against the providers' published protocols, sharing no code with `teacher/`, so a
misunderstanding cannot hide in both. Routes::

    POST /v1/chat/completions     OpenAI Chat Completions (base_url = http://HOST:PORT/v1)
    POST /v1/messages             Anthropic Messages      (base_url = http://HOST:PORT)
    GET  /v1/models               OpenAI model list (one model, for compatibility probes)
    GET  /_emulator/counters      JSON counters (see `Counters.snapshot`)
    POST /_emulator/reset         zero the counters

The wire shapes live in `openai_protocol.py` and `anthropic_protocol.py`; this module runs
the flow every request takes: count, authenticate, parse, admit, fault, answer, wait, reply.
HTTP/1.1 itself is `_http.py` (asyncio.Protocol + httptools); a request with no latency to
wait is answered within the callback that parsed it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from amr_async.emulator._http import HttpServer, Later, Request, Response, json_response
from amr_async.emulator.anthropic_protocol import ANTHROPIC_ROUTE, AnthropicProtocol
from amr_async.emulator.bank import Bank
from amr_async.emulator.config import EmulatorConfig
from amr_async.emulator.limits import Admission, Refusal, RouteLimits
from amr_async.emulator.openai_protocol import OPENAI_ROUTE, OpenAIProtocol
from amr_async.emulator.protocol import (
    CHARS_PER_TOKEN,
    BadRequest,
    Parsed,
    Protocol,
    estimate_tokens,
)
from amr_async.emulator.scripted import ScriptedTeacher, UnknownKindError, stable_unit

# Faults answered with an error at once: nothing is generated, no latency is waited.
_NOTHING_GENERATED = frozenset(("server_error", "overloaded", "rate_limit", "insufficient_quota"))


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

        Keys: `requests` {route: {status: n}} (status "reset" for connections the server
        dropped, "cancelled" for requests whose client hung up before the answer),
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
        self._openai_proto = OpenAIProtocol(self.openai_limits)
        self._anthropic_proto = AnthropicProtocol(self.anthropic_limits)
        self._ids = itertools.count(1)
        self._answers: dict[str, str] = {}
        self._fault_table = [(k, r) for k, r in config.faults.items() if r > 0]
        openai, anthropic = self._openai_proto, self._anthropic_proto
        self._routes: dict[tuple[str, str], Callable[[Request], Response | Later]] = {
            ("POST", OPENAI_ROUTE): partial(self._chat, openai),
            ("POST", ANTHROPIC_ROUTE): partial(self._chat, anthropic),
            ("GET", "/v1/models"): self._models,
            ("GET", "/_emulator/counters"): self._counters,
            ("POST", "/_emulator/reset"): self._reset,
        }

    # ---------------------------------------------------------------- routes

    def handle(self, request: Request) -> Response | Later:
        """Answer one request (routes in the module docstring); never blocks.

        Returns:
            The answer, or a `Later` one when latency (or a hang) is to be waited out.
        """
        route = self._routes.get((request.method, request.path))
        if route is None:
            return self._not_found(request)
        return route(request)

    def _counters(self, request: Request) -> Response:
        return json_response(200, self.counters.snapshot())

    def _reset(self, request: Request) -> Response:
        self.counters.reset()
        return json_response(200, {})

    def _models(self, request: Request) -> Response:
        body = {
            "object": "list",
            "data": [{"id": "emulator", "object": "model", "created": 0, "owned_by": "amr-async"}],
        }
        return json_response(200, body)

    def _not_found(self, request: Request) -> Response:
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
        return json_response(404, body)

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

    def _answer(self, digest: str, parsed: Parsed) -> str:
        text = self._answers.get(digest)
        if text is None:
            text = self.teacher.answer(parsed.prompt_text, parsed.question)
            if len(self._answers) >= 4096:
                self._answers.clear()
            self._answers[digest] = text
        return text

    def _chat(self, proto: Protocol, request: Request) -> Response | Later:
        raw = request.body
        digest = body_hash(raw)
        counters = self.counters
        counters.body_hashes[digest] += 1
        seen = counters.body_hashes[digest]
        reply = self._reply

        auth = proto.check_auth(request, self.config.api_key)
        if auth is not None:
            return reply(proto, auth)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return reply(proto, proto.bad_json())
        try:
            parsed = proto.parse(data)
            if parsed.input_tokens > self.config.context_window:
                raise proto.context_error(parsed.input_tokens, self.config.context_window)
            answer_text = self._answer(digest, parsed)
        except BadRequest as exc:
            return reply(proto, proto.bad_request(exc))
        except UnknownKindError as exc:
            return reply(proto, proto.bad_request(BadRequest(str(exc), "messages")))

        limits = proto.limits
        admitted = limits.admit(proto.charges(parsed))
        if isinstance(admitted, Refusal):
            return reply(proto, proto.rate_limited(admitted, parsed, self._headers(proto)))
        admission: Admission = admitted
        fault = self._fault(digest, seen)
        if fault is not None:
            counters.faults[fault] += 1
        if fault in _NOTHING_GENERATED:
            limits.finish(admission, 0)  # nothing generated: the output reservation is released
            return reply(proto, proto.fault_error(fault, self._headers(proto)))
        try:
            text, finish, output_tokens = self._cut(answer_text, parsed, fault)
            delay = self._delay(digest, seen, output_tokens, fault)
        except BaseException:
            limits.finish(admission, None)  # a bug of ours: the slot is released all the same
            raise
        done = partial(self._success, proto, parsed, admission, text, finish, output_tokens, fault)
        if delay > 0:
            return Later(delay, done, partial(self._cancelled, proto, admission, output_tokens))
        return done()

    @staticmethod
    def _cut(text: str, parsed: Parsed, fault: str | None) -> tuple[str, str, int]:
        """The answer cut at a stop sequence or at max_tokens: text, finish, output tokens."""
        finish = "stop"
        for s in parsed.stop:
            cut = text.find(s) if s else -1
            if cut >= 0:
                text, finish = text[:cut], "stop_sequence"
        output_tokens = estimate_tokens(text)
        if output_tokens > parsed.max_tokens or fault == "finish_length":
            limit = parsed.max_tokens if output_tokens > parsed.max_tokens else output_tokens // 2
            text = text[: limit * CHARS_PER_TOKEN]
            output_tokens, finish = estimate_tokens(text), "length"
        return text, finish, output_tokens

    def _delay(self, digest: str, seen: int, output_tokens: int, fault: str | None) -> float:
        """Seconds to wait before answering: the latency model's draw, or a hang's."""
        latency = self.config.latency
        delay = 0.0
        if latency.base_s or latency.per_output_token_s:
            u = stable_unit(self.config.seed, "latency", digest, seen)
            delay = latency.draw(u, output_tokens)
        if fault == "hang":
            delay = max(delay, self.config.hang_s)
        return delay

    def _success(
        self,
        proto: Protocol,
        parsed: Parsed,
        admission: Admission,
        text: str,
        finish: str,
        output_tokens: int,
        fault: str | None,
    ) -> Response:
        """The answer once any latency is over; settles the admission whatever happens."""
        counters = self.counters
        route = proto.route
        try:
            request_id = f"req_emu{next(self._ids):016x}"
            body = orjson.dumps(
                proto.success(parsed, text, finish, output_tokens, request_id, self._wall())
            )
            headers = self._headers(proto)
            headers[proto.request_id_header] = request_id
            headers["Content-Type"] = "application/json"
            if fault == "connection_reset":
                # Headers and half the body, then the connection is dropped.
                counters.requests[route]["reset"] += 1
                return Response(200, body, headers, cut_after=len(body) // 2)
            if fault == "malformed_json":
                body = body[: len(body) // 3] + b"<html><body>502 Bad Gateway</body></html>"
            elif fault == "truncated_body":
                body = body[: len(body) // 2]
            counters.input_tokens += parsed.input_tokens
            counters.output_tokens += output_tokens
            counters.requests[route]["200"] += 1  # `reply` without its error-only work
            return Response(200, body, headers)
        finally:
            proto.limits.finish(admission, output_tokens)

    def _cancelled(self, proto: Protocol, admission: Admission, output_tokens: int) -> None:
        """The client hung up (a timeout during latency or a hang) before its answer."""
        self.counters.requests[proto.route]["cancelled"] += 1
        proto.limits.finish(admission, output_tokens)

    def _reply(self, proto: Protocol, resp: Response) -> Response:
        """Count a refusal or error answer and give it a request id and the limits."""
        counters = self.counters
        counters.requests[proto.route][str(resp.status)] += 1
        if resp.status == 429:
            counters.rate_limited += 1
        if proto.request_id_header not in resp.headers:
            # Errors carry a request id and the limits in force, as the real APIs do.
            resp.headers[proto.request_id_header] = f"req_emu{next(self._ids):016x}"
            for name, value in self._headers(proto).items():
                resp.headers.setdefault(name, value)
        return resp

    def _headers(self, proto: Protocol) -> dict[str, str]:
        return proto.limit_headers(self._wall())


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
    server = HttpServer(emulator.handle)
    bound_port = await server.start(host, port)
    try:
        yield RunningEmulator(emulator, host, bound_port)
    finally:
        await server.aclose()
