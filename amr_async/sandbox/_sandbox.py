"""The asyncio side of the sandbox: zygote lifecycle, job pool, per-test deadlines, cache."""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import fcntl
import hashlib
import json
import marshal
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from amr_async.sandbox import _worker
from amr_async.sandbox._judge import Outcome, Plan, plan
from amr_async.sandbox._types import Job, JobResult, Limits, Status, TestResult

Isolation = Literal["auto", "namespaces", "none"]

_WORKER = Path(_worker.__file__).resolve()
# The zygote imports the worker as a top-level module from its own directory, never the
# package (`_worker`'s docstring), and so from its cached bytecode: run as a script it
# was compiled anew, and the compiler's freed memory stayed mapped (8.2 MB anonymous
# instead of 6.2) for every fork to copy and every exit to unmap.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); import _worker; del sys.path[0]; "
    "_worker.main(int(sys.argv[2]), sys.argv[3])"
)
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Statuses that depend on the machine's load rather than on the code: never cached.
_UNCACHEABLE = frozenset({Status.TIMEOUT, Status.CRASHED})


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start, or was used after `aclose`)."""


class _Frames:
    """Reads the result pipe and cuts it into `_worker.frame` records; wakes one waiter per record.

    It reads the pipe's descriptor itself with `loop.add_reader` rather than through a pipe
    transport: a transport takes the descriptor over, and uvloop's closes it twice (libuv,
    then the file object, expecting EBADF). Between the two closes another thread's `open`
    can be handed the same number (the journal's output file was), and the second close then
    takes that file away. Here the descriptor is closed once, by `close`.
    """

    def __init__(self, fd: int, cap: int, loop: asyncio.AbstractEventLoop) -> None:
        self.buf = bytearray()
        self.pos = 0  # where the next frame (or garbage to skip) starts
        self.eof = False
        self.overflow = False
        self._cap = cap
        self._waiter: asyncio.Future[None] | None = None
        self._fd = fd
        self._loop = loop
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)
        self._reading = True

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.buf += data
            if self.ready():  # not for every chunk of a large value
                self._wake()
        else:
            self.eof = True
            self._stop_reading()
            self._wake()

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def close(self) -> None:
        """Stop reading and close the pipe (idempotent)."""
        self._stop_reading()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def ready(self) -> bool:
        """`take` has something to do: a whole frame, an oversized one, or bytes to skip."""
        left = len(self.buf) - self.pos
        if left < _HEAD:
            return False
        if self.buf[self.pos : self.pos + _MAGIC_LEN] != _MAGIC:
            return True
        size: int = _FIELDS.unpack_from(self.buf, self.pos + _MAGIC_LEN)[3]
        return size > self._cap or left >= _HEAD + size

    def take(self) -> list[tuple[int, int, int, bytes]]:
        """Whole frames as (index, kind, micros, payload); sets `overflow` on a huge one."""
        out = []
        buf, pos = self.buf, self.pos
        while len(buf) - pos >= _HEAD and not self.overflow:
            if buf[pos : pos + _MAGIC_LEN] != _MAGIC:
                # Bytes the code wrote itself: skip to the next magic.
                found = buf.find(_MAGIC, pos + 1)
                pos = found if found >= 0 else max(pos, len(buf) - _MAGIC_LEN + 1)
                continue
            fields = pos + _MAGIC_LEN
            (crc,) = _CRC.unpack_from(buf, fields + _FIELDS.size)
            if crc != binascii.crc32(buf[fields : fields + _FIELDS.size]):
                pos += 1
                continue
            i, kind, micros, size = _FIELDS.unpack_from(buf, fields)
            if size > self._cap:
                self.overflow = True  # one record larger than the cap: stop reading
                self._stop_reading()
                break
            if len(buf) - pos - _HEAD < size:
                break
            out.append((i, kind, micros, bytes(buf[pos + _HEAD : pos + _HEAD + size])))
            pos += _HEAD + size
        if pos == len(buf) or pos > 1 << 20:
            del buf[:pos]
            pos = 0
        self.pos = pos
        return out

    async def wait(self, seconds: float) -> None:
        """Return when a frame or EOF arrives, or after `seconds`."""
        if self.eof or self.ready():
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(seconds, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


_MAGIC = _worker.FRAME_MAGIC
_MAGIC_LEN = len(_MAGIC)
_FIELDS = _worker.FRAME_FIELDS
_CRC = _worker.FRAME_CRC
_HEAD = _MAGIC_LEN + _FIELDS.size + _CRC.size
# Records of probe values, in the `_worker.frame` kind byte.
_R, _D, _E, _V, _O = (ord(c) for c in "RDEvo")
_ERRORS = {ord("e"): "e", ord("u"): "u"}


_TICK = os.sysconf("SC_CLK_TCK")
# A child with at most this many probes to run writes each record at once.
_UNBUFFERED_UP_TO = 32
_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))


def _limit_values(job: Job) -> tuple[Any, ...]:
    """`dataclasses.astuple(job.limits)` without its deep copy (the fields are scalars)."""
    limits = job.limits
    return tuple(getattr(limits, name) for name in _LIMIT_FIELDS)


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (host PID), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def _starved_by(
    pid: int | None,
    test_cpu: float | None,
    test_began: float,
    now: float,
    limit: float,
    wall_factor: float,
) -> float:
    """How much longer a test whose wall-clock limit expired should get (0: none).

    A test is out of time when its process has used `limit` seconds of CPU since
    the test began, or after `wall_factor` × `limit` of wall-clock time (code that
    sleeps or blocks). Less CPU than wall time means a busy machine, not slow code.
    """
    wall_left = test_began + limit * wall_factor - now
    if pid is None or test_cpu is None or wall_left <= 0:
        return 0.0
    cpu = _cpu_seconds(pid)
    if cpu is None or cpu - test_cpu >= limit:
        return 0.0
    return min(max(limit - (cpu - test_cpu), 0.05), wall_left)


async def _recv_line(loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray) -> bytes:
    """The next line from `sock` (its newline included; what is left, at EOF); the bytes
    after it stay in `buf`."""
    while (end := buf.find(b"\n")) < 0:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            end = len(buf) - 1
            break
        buf += chunk
    line = bytes(buf[: end + 1])
    del buf[: end + 1]
    return line


async def _recv_rest(loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray) -> bytes:
    """Everything `sock` sends until EOF, after what `buf` holds already."""
    while chunk := await loop.sock_recv(sock, 1 << 16):
        buf += chunk
    rest = bytes(buf)
    buf.clear()
    return rest


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(slots=True)
class _Run:
    """Mutable state of one job across its processes."""

    job: Job
    plans: list[Plan]
    probes: list[tuple[str, str | bytes]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)  # probe index -> test index
    first: list[int] = field(default_factory=list)  # test index -> first probe
    outcomes: list[Outcome | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    results: list[TestResult | None] = field(default_factory=list)
    limits: list[float] = field(default_factory=list)
    module_error: str | None = None
    stop: bool = False  # fail_fast tripped
    ready: bool = False  # the current process has executed the module
    finished: bool = False  # the current process flushed its output after the last probe
    unbuffered: bool = False  # the next process writes each record at once (exact blame)

    def __post_init__(self) -> None:
        for t, p in enumerate(self.plans):
            self.first.append(len(self.probes))
            self.probes.extend(p.probes)
            self.owner.extend([t] * len(p.probes))
        self.first.append(len(self.probes))
        self.outcomes = [None] * len(self.probes)
        self.seconds = [0.0] * len(self.probes)
        self.results = [None] * len(self.plans)
        job = self.job
        self.limits = list(job.time_limits or [job.limits.test_timeout_s] * len(self.plans))
        for t, p in enumerate(self.plans):
            if not p.probes:
                self._judge(t)

    def _judge(self, t: int) -> None:
        p = self.plans[t]
        lo, hi = self.first[t], self.first[t + 1]
        got = [o for o in self.outcomes[lo:hi] if o is not None]
        status, message, value = p.judge(got)
        self._set(t, status, message, value, sum(self.seconds[lo:hi]))

    def _set(
        self, t: int, status: Status, message: str, value: Any = None, secs: Any = None
    ) -> None:
        if self.results[t] is not None:
            return
        judged_in: Literal["parent", "sandbox"] = (
            "sandbox" if self.plans[t].judged_in == "sandbox" else "parent"
        )
        self.results[t] = TestResult(t, status, message, judged_in, secs, value)
        if self.job.fail_fast and not status.ok:
            self.stop = True

    def record(self, i: int, kind: str, micros: int, payload: Any) -> None:
        if self.outcomes[i] is not None or self.results[self.owner[i]] is not None:
            return  # first record wins; later ones (forged or not) are ignored
        self.outcomes[i] = (kind, payload)
        self.seconds[i] = micros / 1e6
        t = self.owner[i]
        if all(o is not None for o in self.outcomes[self.first[t] : self.first[t + 1]]):
            self._judge(t)

    def next_probe(self, start: int) -> int:
        """First probe at or after `start` whose test has no verdict yet."""
        i = start
        while i < len(self.probes) and (
            self.outcomes[i] is not None or self.results[self.owner[i]] is not None
        ):
            i += 1
        return i


class Sandbox:
    """Runs untrusted code against tests in isolated processes.

    One instance owns one pre-warmed zygote process and a pool of at most
    `parallelism` concurrent jobs. Tasks may share an instance. Use it as an
    async context manager (or call `aclose`).

    Args:
        parallelism: jobs running at once (default: the number of CPUs).
        cache_size: results kept in the LRU cache keyed by (code hash, tests hash);
            0 disables it. Results with timeouts or crashes are never cached.
        isolation: "auto" (namespaces when running as root, else "none"),
            "namespaces" (fail if unavailable), or "none" (rlimits and a process
            group only: for development machines without root; `setsid` escapes it).
        python: interpreter that runs the code (default: this one).
    """

    def __init__(
        self,
        *,
        parallelism: int | None = None,
        cache_size: int = 4096,
        isolation: Isolation = "auto",
        python: str = sys.executable,
    ) -> None:
        if parallelism is not None and parallelism < 1:
            raise ValueError("parallelism must be ≥ 1")
        self._parallelism = parallelism or os.cpu_count() or 1
        self._cache_size = cache_size
        self._requested: Isolation = isolation
        self._python = python
        self._cache: collections.OrderedDict[tuple[str, str], JobResult] = collections.OrderedDict()
        self._slots: asyncio.Semaphore | None = None
        self._send_lock: asyncio.Lock | None = None
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._isolation: str | None = None
        self._closed = False
        self._starting: asyncio.Lock | None = None
        self._tag = f"amr-sandbox-{uuid.uuid4().hex[:12]}"

    @property
    def parallelism(self) -> int:
        """Jobs (processes) that run at once; more wait for a slot."""
        return self._parallelism

    @property
    def process_tag(self) -> str:
        """A token in the command line of every process this sandbox forks (for monitoring)."""
        return self._tag

    @property
    def zygote_pid(self) -> int | None:
        """The zygote's process id, once started (its /proc entry carries the CPU of
        every finished job: the zygote reaps each job's child)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def isolation(self) -> str | None:
        """The isolation in force ("namespaces" or "none"), once started."""
        return self._isolation

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the zygote (done lazily by `run` too).

        Raises:
            SandboxError: closed, or the requested isolation is unavailable.
        """
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._proc is not None:
                return
            parent, child = socket.socketpair()
            try:
                proc = await asyncio.create_subprocess_exec(
                    self._python,
                    "-I",
                    "-c",
                    _BOOTSTRAP,
                    str(_WORKER.parent),
                    str(child.fileno()),
                    self._requested,
                    self._tag,
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    env=_ENV,
                )
            finally:
                child.close()
            parent.setblocking(False)
            loop = asyncio.get_running_loop()
            hello = b""
            while not hello.endswith(b"\n"):
                chunk = await loop.sock_recv(parent, 4096)
                if not chunk:
                    break
                hello += chunk
            info = json.loads(hello) if hello.endswith(b"\n") else {"error": "zygote died"}
            if "error" in info:
                parent.close()
                await proc.wait()
                raise SandboxError(f"sandbox could not start: {info['error']}")
            self._isolation = str(info["isolation"])
            self._sock, self._proc = parent, proc
            self._slots = asyncio.Semaphore(self._parallelism)
            self._send_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Stop the zygote (it finishes or kills the jobs still running, then exits)."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    def cache_key(self, job: Job) -> tuple[str, str]:
        """The cache key of a job: (hash of the code, hash of tests, limits and options)."""
        return self._key(job, [plan(t, job.entry_point) for t in job.tests])

    @staticmethod
    def _key(job: Job, plans: list[Plan]) -> tuple[str, str]:
        code_hash = hashlib.sha256(job.code.encode("utf-8", "surrogatepass")).hexdigest()
        h = hashlib.sha256()
        h.update(
            repr((job.entry_point, _limit_values(job), job.time_limits, job.fail_fast)).encode()
        )
        for test, p in zip(job.tests, plans, strict=True):
            h.update(b"\x00" + repr(type(test).__name__).encode())
            for kind, payload in p.probes:
                body = (
                    payload
                    if isinstance(payload, bytes)
                    else payload.encode("utf-8", "surrogatepass")
                )
                h.update(f"\x00{kind}{len(body)}:".encode() + body)
            key = p.key if isinstance(p.key, bytes) else p.key.encode("utf-8", "surrogatepass")
            h.update(f"\x00{len(key)}:".encode() + key)
        return code_hash, h.hexdigest()

    async def run(self, job: Job, *, shards: int = 1) -> JobResult:
        """Run `job` and judge every test. Never blocks the event loop.

        Args:
            job: code, tests and limits.
            shards: spread the tests over this many processes that run at once,
                each holding a pool slot, so that one long job keeps several cores
                busy. Test k goes to shard k mod `shards` (inputs that grow along
                the list are dealt out evenly); each shard executes the module
                once. With `Job.fail_fast`, a failure stops only its own shard.

        Raises:
            SandboxError: the sandbox is closed or could not start.
            ValueError: `shards` < 1.
        """
        if shards < 1:
            raise ValueError("shards must be ≥ 1")
        plans = [plan(t, job.entry_point) for t in job.tests]
        key = self._key(job, plans) if self._cache_size else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return replace(self._cache[key], cached=True)
        await self.start()
        shards = min(shards, len(job.tests))
        if shards > 1:
            result = await self._sharded(job, plans, shards)
        else:
            result = await self._slot_execute(_Run(job, plans))
        if key is not None and not any(t.status in _UNCACHEABLE for t in result.tests):
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    async def _slot_execute(self, run: _Run) -> JobResult:
        assert self._slots is not None
        async with self._slots:
            return await self._execute(run)

    async def _sharded(self, job: Job, plans: list[Plan], shards: int) -> JobResult:
        """Run the tests dealt out to `shards` sub-jobs at once; merge in test order."""
        parts: list[range] = [range(s, len(job.tests), shards) for s in range(shards)]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._slot_execute(
                            _Run(
                                replace(
                                    job,
                                    tests=[job.tests[i] for i in part],
                                    time_limits=(
                                        [job.time_limits[i] for i in part]
                                        if job.time_limits
                                        else None
                                    ),
                                ),
                                [plans[i] for i in part],
                            )
                        )
                    )
                    for part in parts
                ]
        except ExceptionGroup as failed:  # the first shard's error, as an unsharded run raises
            raise failed.exceptions[0] from None
        results = [task.result() for task in tasks]
        tests: list[TestResult | None] = [None] * len(job.tests)
        for part, res in zip(parts, results, strict=True):
            for i, t in zip(part, res.tests, strict=True):
                tests[i] = replace(t, index=i)
        return JobResult(
            passed=all(r.passed for r in results),
            tests=tuple(t for t in tests if t is not None),
            module_error=next((r.module_error for r in results if r.module_error), None),
            isolation=results[0].isolation,
            output="".join(r.output for r in results),
            output_bytes=sum(r.output_bytes for r in results),
            processes_started=sum(r.processes_started for r in results),
            cpu_seconds=sum(r.cpu_seconds for r in results),
        )

    async def _execute(self, run: _Run) -> JobResult:
        started = 0
        output = ""
        output_bytes = 0
        cpu = 0.0
        start = run.next_probe(0)
        # At least one process, so a job without tests still executes (and checks) the module.
        while (started == 0 or start < len(run.probes)) and not run.stop and not run.module_error:
            started += 1
            start, report = await self._attempt(run, start)
            if not output:
                output = str(report.get("output", ""))
            output_bytes += int(report.get("output_bytes", 0))
            cpu += float(report.get("cpu", 0.0))
        for t in range(len(run.plans)):
            if run.results[t] is None:
                if run.module_error is not None:
                    run._set(t, Status.ERROR, f"the module failed: {run.module_error}")
                else:
                    run._set(t, Status.SKIPPED, "not run: an earlier test failed (fail_fast)")
        tests = tuple(r for r in run.results if r is not None)
        return JobResult(
            passed=all(t.status.ok for t in tests) and run.module_error is None,
            tests=tests,
            module_error=run.module_error,
            isolation=self._isolation or "none",
            output=output,
            output_bytes=output_bytes,
            processes_started=started,
            cpu_seconds=cpu,
        )

    async def _attempt(self, run: _Run, start: int) -> tuple[int, dict[str, Any]]:
        """Run one child process from probe `start`; return where to restart and its report."""
        job, lim = run.job, run.job.limits
        loop = asyncio.get_running_loop()
        first_test = run.owner[start] if start < len(run.probes) else len(run.limits)
        budget = lim.code_timeout_s + sum(run.limits[first_test:])
        # A few records cost the parent as few wake-ups written at once as batched;
        # then a hang or crash is blamed on the right probe without a rerun (which
        # would cost a looping test's limit a second time).
        run.unbuffered = run.unbuffered or len(run.probes) - start <= _UNBUFFERED_UP_TO
        spec = {
            "code": job.code,
            "entry_point": job.entry_point,
            "probes": run.probes,
            "start": start,
            "unbuffered": run.unbuffered,
            "limits": {
                "memory_bytes": lim.memory_bytes,
                "file_bytes": lim.file_bytes,
                "tmp_bytes": lim.tmp_bytes,
                "open_files": lim.open_files,
                "processes": lim.processes,
            },
            "cpu_seconds": budget,
        }
        # The zygote's own limits (it kills the child at these): in the job's header.
        hard_deadline_s = budget * lim.wall_factor + 5.0
        body = marshal.dumps(spec)
        res_r, res_w = os.pipe()
        with contextlib.suppress(OSError):  # fewer reads and wake-ups for large values
            fcntl.fcntl(res_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        ctl, ctl_child = socket.socketpair()
        ctl.setblocking(False)
        proto: _Frames | None = None
        report: dict[str, Any] = {}
        try:
            assert self._send_lock is not None
            async with self._send_lock:
                if self._sock is None:
                    raise SandboxError("the sandbox is closed")
                try:
                    head = _worker.JOB_HEADER.pack(
                        len(body), hard_deadline_s, lim.output_bytes, lim.output_keep_bytes
                    )
                    socket.send_fds(self._sock, [head], [res_w, ctl_child.fileno()])
                    await loop.sock_sendall(self._sock, body)
                except OSError as exc:
                    raise SandboxError("the sandbox's zygote process is gone") from exc
            os.close(res_w)
            res_w = -1
            ctl_child.close()
            proto = _Frames(res_r, lim.result_bytes, loop)
            res_r = -1  # `proto` owns it now
            # The control socket through the loop's socket calls, not a stream: a
            # transport, protocol and reader per job, and a task per `wait_for`, cost
            # the loop more than the two small messages it carries.
            received = bytearray()
            hello: Any = {}
            with contextlib.suppress(TimeoutError, ValueError):
                async with asyncio.timeout(30):
                    hello = json.loads(await _recv_line(loop, ctl, received))
            pid = hello.get("pid") if isinstance(hello, dict) else None
            if "error" in hello:  # the zygote could not start the child
                report = hello
                outcome = "eof"
            else:
                outcome = await self._follow(run, start, proto, pid if type(pid) is int else None)
            # Done, failed fast, or out of time: the zygote kills the whole tree.
            with contextlib.suppress(ConnectionError):
                await loop.sock_sendall(ctl, b"k")
            with contextlib.suppress(TimeoutError, ConnectionError, ValueError):
                async with asyncio.timeout(30):
                    raw = await _recv_rest(loop, ctl, received)
                report = report or (json.loads(raw) if raw else {"error": "zygote vanished"})
            if self._isolation == "namespaces":
                # The namespace is gone, so EOF is near; late records still count.
                deadline = time.monotonic() + 5
                while not proto.eof and time.monotonic() < deadline:
                    await proto.wait(deadline - time.monotonic())
            self._consume(run, start, proto)
            return self._conclude(run, start, outcome, report), report
        finally:
            ctl.close()
            ctl_child.close()
            if proto is not None:
                proto.close()
            for fd in (res_r, res_w):
                if fd >= 0:
                    os.close(fd)

    def _consume(self, run: _Run, start: int, proto: _Frames) -> None:
        n = len(run.probes)
        for i, kind, micros, raw in proto.take():
            if i == -1:
                if kind == _R:
                    run.ready = True
                elif kind == _D:
                    run.finished = True
                elif kind == _E and run.module_error is None:
                    with contextlib.suppress(ValueError, TypeError):
                        name, msg = json.loads(raw)
                        run.module_error = f"{name}: {msg}"
                continue
            if not start <= i < n:
                continue  # not a probe of this process (only forged records are)
            if kind == _V:
                run.record(i, "v", micros, raw)
            elif kind in _ERRORS:
                try:
                    payload = json.loads(raw)
                except ValueError:
                    continue
                run.record(i, _ERRORS[kind], micros, payload)
            elif kind == _O:
                run.record(i, "o", micros, None)

    async def _follow(self, run: _Run, start: int, proto: _Frames, pid: int | None) -> str:
        """Read records until done, EOF, overflow, fail-fast, or a deadline; say which.

        Limits are CPU-time-like: when a test's wall-clock limit expires but the
        child used less CPU than that since the test began (a busy machine), the
        deadline is extended, up to `Limits.wall_factor` × the limit of wall time.
        """
        run.ready = run.finished = False
        lim = run.job.limits
        test_began = time.monotonic()
        test_cpu: float | None = 0.0  # the child is new: its CPU clock starts at zero
        deadline = test_began + lim.code_timeout_s
        nxt = start
        grace: float | None = None
        while True:
            was_ready = run.ready
            self._consume(run, start, proto)
            if run.module_error is not None:
                return "module_error"
            if run.stop:
                return "fail_fast"
            moved = run.next_probe(nxt)
            if moved >= len(run.probes) and run.ready:
                # All verdicts are in; give the child a moment to flush its output.
                if run.finished or (grace is not None and time.monotonic() >= grace):
                    return "done"
                if grace is None:
                    grace = deadline = time.monotonic() + 1.0
            if moved < len(run.probes) and (moved != nxt or (run.ready and not was_ready)):
                nxt = moved
                test_began = time.monotonic()
                test_cpu = _cpu_seconds(pid) if pid is not None else None
                deadline = test_began + run.limits[run.owner[nxt]]
            if proto.overflow:
                return "overflow"
            if proto.eof:
                return "eof"
            now = time.monotonic()
            if now >= deadline:
                if grace is not None:
                    return "done"
                limit = run.limits[run.owner[nxt]] if run.ready else lim.code_timeout_s
                extra = _starved_by(pid, test_cpu, test_began, now, limit, lim.wall_factor)
                if extra <= 0:
                    return "timeout" if run.ready else "module_timeout"
                deadline = now + extra
            await proto.wait(deadline - now)

    def _conclude(self, run: _Run, start: int, outcome: str, report: dict[str, Any]) -> int:
        """Assign the verdict of the probe that did not report; return the restart point."""
        lim = run.job.limits
        nxt = run.next_probe(start)
        if outcome in ("done", "fail_fast", "module_error"):
            return nxt
        code = report.get("exit")
        killed = report.get("killed")
        if "error" in report or "exit" not in report:
            error = report.get("error", "no report from the zygote")
            run.module_error = f"SandboxError: {error}"
            return len(run.probes)
        if outcome == "module_timeout":
            run.module_error = f"TimeoutError: module execution exceeded {lim.code_timeout_s:g} s"
            return len(run.probes)
        if not run.ready:
            if killed == "output":
                run.module_error = f"OutputLimit: printed more than {lim.output_bytes} bytes"
            else:
                run.module_error = f"the process exited (status {code}) before running the tests"
            return len(run.probes)
        if nxt >= len(run.probes):
            return nxt
        if outcome != "overflow" and not run.unbuffered:
            # The child holds records back for up to 2 ms: the record of probe `nxt`
            # may have died in its buffer while a later probe hung or crashed. Rerun
            # from `nxt` writing every record at once, and blame only that process.
            run.unbuffered = True
            return nxt
        run.unbuffered = False
        t = run.owner[nxt]
        if outcome == "timeout":
            status, msg = Status.TIMEOUT, f"exceeded the time limit of {run.limits[t]:g} s"
        elif outcome == "overflow":
            status, msg = Status.OUTPUT_LIMIT, f"result larger than {lim.result_bytes} bytes"
        elif killed == "output":
            status, msg = Status.OUTPUT_LIMIT, f"printed more than {lim.output_bytes} bytes"
        elif code == -signal.SIGXFSZ:
            status, msg = Status.OUTPUT_LIMIT, f"wrote a file larger than {lim.file_bytes} bytes"
        elif code == -signal.SIGXCPU:
            status, msg = Status.TIMEOUT, "exceeded the CPU time limit"
        elif killed == "deadline":
            status, msg = Status.TIMEOUT, "exceeded the job's hard deadline"
        else:
            status, msg = Status.CRASHED, f"the process ended (status {code}) during this test"
        run._set(t, status, msg)
        return run.next_probe(run.first[t + 1])
