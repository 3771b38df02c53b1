"""The processes that run untrusted code: zygote, per-job supervisor, and child.

Stdlib only: this file runs as a script (``python -I _worker.py FD ISOLATION TAG``;
TAG only marks the command line of every process it forks) so that the
package (and the Rust extension) is never imported next to untrusted code. The
parent imports it as a module for the value codec (`encode`, `decode`).

Process tree of one job::

    parent (asyncio) ── socketpair ──► zygote (root, pre-warmed, forks per job;
                                         │      own mount ns, shared empty net ns)
                                         └─► supervisor S (root, trusted; new mount ns)
                                               └─► child C (PID 1 of a new PID namespace,
                                                    uid 65534, rlimits, Landlock scope)
                                                    runs the code

What every job shares, set up once by the zygote (`_isolate_zygote`), and why
that is safe:

* The mount namespace's base: every mount made private (nothing propagates to
  the host) and /root, /home replaced by empty tmpfs with the interpreter's own
  directories bound back. Each job's mount namespace starts as a copy of it and
  adds what is per job: a /proc of its own PID namespace and empty size-capped
  tmpfs on /tmp, /var/tmp, /dev/shm (its private work dir is /tmp/job). The
  copies are private too, so a job's mounts reach neither the zygote nor another
  job; the code runs as nobody and cannot mount anything itself.
* The network namespace, new and empty: its loopback is down and only
  CAP_NET_ADMIN could raise it, so no address is reachable (TCP and UDP give
  ENETUNREACH), not even another job's listener. What a network namespace also
  scopes, abstract unix sockets, is scoped per job by a Landlock domain of the
  child's (ABI >= 6, `_scope_to_this_job`, which also scopes signals). On a
  kernel without Landlock scopes each job gets its own network namespace, as
  before. A namespace per job had cost ~1 ms of the supervisor's CPU plus the
  kernel's teardown of it on a kworker, which no rusage shows.

What stays per job: the PID namespace (killing C, its PID 1, kills every process
of the job, `setsid` orphans included), the mount namespace with its /proc and
tmpfs, the uid switch, rlimits, the scrubbed environment, the Landlock domain.

* S is trusted: it holds the control socket to the parent, watches C through a
  pidfd, drains C's stdout/stderr (capped) and SIGKILLs C on the parent's word,
  on its own hard deadline, or when the output cap is exceeded. When C (PID 1)
  dies the kernel kills every process left in its PID namespace, including
  `setsid` orphans, so nothing outlives the job.
* C is untrusted from the moment the candidate code runs. It writes one record
  per probe to fd 3 (the result pipe). Anything C writes there is treated as a
  claim about a *value*: the expected values never enter C, so the parent judges
  and a forged record is no better than the code returning that value honestly.

Records on the result pipe are frames: `FRAME_MAGIC`, the `FRAME_FIELDS` (probe
index, kind, microseconds, payload length), a CRC-32 of those fields, then the
payload. The parent skips to the next magic after anything that is not a valid
header, so bytes the code itself writes to the pipe cannot swallow the honest
records that follow (and a frame it forges is only a claim about a value)::

    -1 R us            module executed, probes start
    -1 E us [type,msg] module raised (JSON)
    -1 D 0             output flushed after the last probe
    i v us VALUE       probe i returned the value encoded as VALUE (see `encode`)
    i e us [type,msg]  probe i raised (JSON)
    i u us "typename"  probe i returned a value that has no strict encoding (JSON)
    i o us             statement test i ran without raising (sandbox-judged)
"""

from __future__ import annotations

import binascii
import contextlib
import ctypes
import fcntl
import gc
import json
import marshal
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from typing import Any

# Linux constants (sched.h, sys/mount.h); stable ABI values.
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
# Landlock (linux/landlock.h, x86_64 and most 64-bit syscall tables): ABI 6 added
# scopes, which cut a process off from abstract unix sockets and signals of
# processes outside its Landlock domain.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1
LANDLOCK_SCOPE_SIGNAL = 2
PR_SET_NO_NEW_PRIVS = 38
M_MMAP_THRESHOLD = -3  # malloc.h

NOBODY = 65534
# Home directories are replaced by empty tmpfs in the child (they hold keys and
# caches); the interpreter's own directories under them are bound back in.
HIDDEN_DIRS = ("/root", "/home")
HEADER = struct.Struct("!Q")
FRAME_MAGIC = b"\x00\xffAMR\x1e"
FRAME_FIELDS = struct.Struct("<iBQI")  # probe index (-1: the module), kind, micros, length
FRAME_CRC = struct.Struct("<I")


def frame(i: int, kind: bytes, micros: int, payload: bytes = b"") -> bytes:
    """One record for the result pipe (see the module docstring)."""
    fields = FRAME_FIELDS.pack(i, kind[0], micros, len(payload))
    return FRAME_MAGIC + fields + FRAME_CRC.pack(binascii.crc32(fields)) + payload


RESULT_FD = 3

# ---------------------------------------------------------------------------
# Value codec: strict types, marshal format (version 2), validated on decode.
#
# Only exact builtin types are encodable (subclasses and custom objects are
# refused, so an `__eq__` that always returns True never reaches a comparison;
# `_check` also refuses what marshal itself would accept loosely: bytearray and
# other buffers, code objects, Ellipsis). marshal is C-fast in both directions
# (JSON cost ~20x more on HumanEval+'s float lists and huge ints). Version 2
# writes no back-references, so a value's encoding does not depend on which of
# its parts share identity. Encodings are not canonical (set and dict order,
# interned strings), so the parent compares bytes first and, when they differ,
# decodes and compares values.
#
# The parent decodes bytes that untrusted code may have forged, and marshal is
# not meant for hostile input: `decode` first walks the bytes (`_scan`), refuses
# every type code outside the builtin-value subset, checks each length against
# the buffer and the nesting depth, and only then lets marshal build the value.
# ---------------------------------------------------------------------------

MARSHAL_VERSION = 2
MAX_DEPTH = 100
_SCALARS = frozenset({int, float, str, bool, type(None), bytes, complex})
_CONTAINERS = frozenset({list, tuple, set, frozenset})


class Unencodable(Exception):
    """A value has no strict encoding (custom class, subclass, or too deep)."""


def _check(v: Any, depth: int) -> None:
    t = type(v)
    if t in _SCALARS:
        return
    if depth >= MAX_DEPTH:
        raise Unencodable(f"nesting deeper than {MAX_DEPTH}")
    if t in _CONTAINERS:
        # One C-level pass over the element types; recurse only into containers.
        types = set(map(type, v))
        if types <= _SCALARS:
            return
        for x in v:
            _check(x, depth + 1)
        return
    if t is dict:
        _check(list(v), depth)
        _check(list(v.values()), depth)
        return
    raise Unencodable(f"{t.__module__}.{t.__qualname__}")


def encode(v: Any) -> bytes:
    """Encode a value of exact builtin types; raise `Unencodable` otherwise."""
    _check(v, 0)
    try:
        return marshal.dumps(v, MARSHAL_VERSION)
    except ValueError as exc:  # "too deeply nested" (cannot happen after _check)
        raise Unencodable(str(exc)) from None


# Type codes of marshal version 2 that `decode` accepts (marshal.c's TYPE_*).
_FIXED = {ord("N"): 0, ord("T"): 0, ord("F"): 0, ord("i"): 4, ord("g"): 8, ord("y"): 16}
_SIZED = frozenset(map(ord, "stu"))  # bytes, interned str, str: int32 length + data
_SEQ = frozenset(map(ord, "([<>"))  # tuple, list, set, frozenset: int32 count + items
_LONG, _DICT, _NULL = ord("l"), ord("{"), ord("0")
_I32 = struct.Struct("<i")


def _scan(data: bytes, pos: int, depth: int) -> int:
    """Validate one encoded value starting at `pos`; return where it ends."""
    end = len(data)
    if pos >= end:
        raise ValueError("truncated value")
    code = data[pos]
    pos += 1
    size = _FIXED.get(code)
    if size is not None:
        pos += size
    elif code in _SIZED or code == _LONG:
        if pos + 4 > end:
            raise ValueError("truncated length")
        (n,) = _I32.unpack_from(data, pos)
        if code != _LONG and n < 0:
            raise ValueError("negative length")
        pos += 4 + (2 * abs(n) if code == _LONG else n)  # long: n 15-bit digits, sign in n
    elif code in _SEQ or code == _DICT:
        if depth >= MAX_DEPTH:
            raise ValueError(f"nesting deeper than {MAX_DEPTH}")
        if code == _DICT:  # key, value, ... up to a NULL code
            while pos < end and data[pos] != _NULL:
                pos = _scan(data, _scan(data, pos, depth + 1), depth + 1)
            pos += 1
        else:
            if pos + 4 > end:
                raise ValueError("truncated count")
            (n,) = _I32.unpack_from(data, pos)
            pos += 4
            if n < 0 or n > end - pos:  # every item takes at least one byte
                raise ValueError("bad item count")
            fixed = _FIXED.get(data[pos]) if n else None
            if (
                fixed is not None
                and data[pos : pos + (fixed + 1) * n : fixed + 1] == bytes([data[pos]]) * n
            ):
                pos += (fixed + 1) * n  # homogeneous scalars (a float list): C-speed check
            else:
                fixed_size = _FIXED.get
                for _ in range(n):  # scalars and strings inline: values can hold millions
                    code = data[pos] if pos < end else -1
                    size = fixed_size(code)
                    if size is not None:
                        pos += size + 1
                    elif code in _SIZED and pos + 5 <= end:
                        (length,) = _I32.unpack_from(data, pos + 1)
                        if length < 0:
                            raise ValueError("negative length")
                        pos += 5 + length
                    else:
                        pos = _scan(data, pos, depth + 1)
    else:
        raise ValueError(f"type code {code:#04x} is not a builtin value")
    if pos > end:
        raise ValueError("truncated value")
    return pos


def decode(data: bytes) -> Any:
    """Inverse of `encode`; raises ValueError on malformed or non-value input."""
    if _scan(data, 0, 0) != len(data):
        raise ValueError("trailing bytes after the value")
    try:
        return marshal.loads(data)
    except (EOFError, TypeError) as exc:  # marshal's own checks (digits out of range, …)
        raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------------
# Child: runs the code and the probes, as PID 1 of its own namespace.
# ---------------------------------------------------------------------------


def _exc_payload(exc: BaseException) -> bytes:
    name = type(exc).__name__
    try:
        msg = str(exc)[:2000]
    except BaseException:  # a hostile __str__
        msg = "<unprintable>"
    return json.dumps([name, msg]).encode()


def _run_probes(spec: dict[str, Any]) -> None:
    perf = time.perf_counter
    write = os.write
    pending: list[bytes] = []
    started = last_flush = perf()
    unbuffered = bool(spec.get("unbuffered"))

    def flush() -> None:
        nonlocal last_flush
        data = b"".join(pending)
        pending.clear()
        view = memoryview(data)
        while view:
            view = view[write(RESULT_FD, view) :]
        last_flush = perf()

    def emit(i: int, kind: bytes, micros: int, payload: bytes = b"") -> None:
        pending.append(frame(i, kind, micros, payload))
        now = perf()
        # At most every 2 ms, to spare the parent wake-ups; at once during the first
        # 50 ms and when the parent asks (it reruns from a probe that did not
        # report, to tell which probe hung or crashed).
        if unbuffered or now - started < 0.05 or now - last_flush > 0.002 or len(pending) > 256:
            flush()

    ns: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    t0 = perf()
    try:
        exec(compile(spec["code"], "<candidate>", "exec"), ns)
    except BaseException as exc:
        emit(-1, b"E", int((perf() - t0) * 1e6), _exc_payload(exc))
        flush()
        return
    emit(-1, b"R", int((perf() - t0) * 1e6))
    entry = spec.get("entry_point")
    fn = ns.get(entry) if entry else None
    probes = spec["probes"]
    loads = marshal.loads
    for i in range(spec["start"], len(probes)):
        kind, payload = probes[i]
        t0 = perf()
        try:
            if kind == "c":
                args = loads(payload)  # fresh objects for every call
                if fn is None:
                    raise NameError(f"name {entry!r} is not defined")
                t0 = perf()
                value = fn(*args)
                dt = int((perf() - t0) * 1e6)
                emit(i, b"v", dt, encode(value))
            elif kind == "x":
                value = eval(compile(payload, f"<test {i}>", "eval"), ns)
                if type(value).__name__ == "generator":
                    value = list(value)
                dt = int((perf() - t0) * 1e6)
                emit(i, b"v", dt, encode(value))
            else:
                exec(compile(payload, f"<test {i}>", "exec"), ns)
                emit(i, b"o", int((perf() - t0) * 1e6))
        except Unencodable as exc:
            emit(i, b"u", int((perf() - t0) * 1e6), json.dumps(str(exc)).encode())
        except BaseException as exc:
            emit(i, b"e", int((perf() - t0) * 1e6), _exc_payload(exc))
            del exc
    flush()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        emit(-1, b"D", 0)
        flush()


def _child(
    spec: dict[str, Any], fds: dict[str, int], libc: Any, mode: str, shared_net: bool
) -> None:
    # Lay out fds: 0=/dev/null, 1 and 2 = output pipe, 3 = result pipe; close the rest.
    null = os.open("/dev/null", os.O_RDWR)
    # Move both pipes above the target range first, so no dup2 below clobbers them.
    high = {k: fcntl.fcntl(fds[k], fcntl.F_DUPFD, 10) for k in ("out", "res")}
    os.dup2(null, 0)
    os.dup2(high["out"], 1)
    os.dup2(high["out"], 2)
    os.dup2(high["res"], RESULT_FD)
    os.closerange(RESULT_FD + 1, 1 << 16)

    lim = spec["limits"]
    if mode == "namespaces":
        # This job's mount namespace is a copy of the zygote's, where every mount is
        # already private and the homes hidden (`_isolate_zygote`), so nothing mounted
        # here propagates anywhere. A fresh /proc shows only this job's processes;
        # /tmp, /var/tmp, /dev/shm become empty size-capped tmpfs, so writes there
        # vanish with the job.
        _mount(libc, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        opts = f"size={lim['tmp_bytes']},mode=1777".encode()
        for path in (b"/tmp", b"/var/tmp", b"/dev/shm"):
            if os.path.isdir(path):
                _mount(libc, b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV, opts)
        workdir = "/tmp/job"
        os.mkdir(workdir, 0o700)
    else:
        workdir = spec["fallback_workdir"]
        os.setpgid(0, 0)  # lets the supervisor kill the group (setsid escapes it)
    root = os.geteuid() == 0
    if root:
        os.chown(workdir, NOBODY, NOBODY)
    os.chdir(workdir)

    cpu = int(spec["cpu_seconds"]) + 1
    for res, value in (
        (resource.RLIMIT_AS, lim["memory_bytes"]),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, lim["file_bytes"]),
        (resource.RLIMIT_NOFILE, lim["open_files"]),
        (resource.RLIMIT_NPROC, lim["processes"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))
    if root:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    if shared_net:
        _scope_to_this_job(libc)

    os.environ.clear()
    os.environ.update(
        {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
        }
    )
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.argv = ["<sandbox>"]
    try:
        _run_probes(spec)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


def _landlock_abi(libc: Any) -> int:
    """The kernel's Landlock ABI version (0 when Landlock is absent or disabled)."""
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(abi), 0)


def _scope_to_this_job(libc: Any) -> None:
    """Cut this process and its descendants off from other jobs' abstract sockets.

    Jobs share one network namespace, and abstract unix socket names are scoped by
    network namespace; a Landlock domain per job scopes them (and signals) to the job.
    """
    attr = _RulesetAttr(0, 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0
    )
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, int(fd), 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(fd)


def _interpreter_dirs() -> list[str]:
    """Directories the interpreter needs at run time (prefixes and sys.path)."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    dirs |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    ordered = sorted(dirs)
    return [d for d in ordered if not any(d.startswith(o + "/") for o in ordered if o != d)]


def _hide_homes(libc: Any) -> None:
    needed = _interpreter_dirs()
    for hidden in HIDDEN_DIRS:
        if not os.path.isdir(hidden):
            continue
        keep = [d for d in needed if d.startswith(hidden + "/")]
        fds = [os.open(d, os.O_PATH | os.O_DIRECTORY) for d in keep]
        _mount(libc, b"tmpfs", hidden.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
        for d, fd in zip(keep, fds, strict=True):
            os.makedirs(d, 0o755, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}".encode(), d.encode(), None, MS_BIND | MS_REC, None)
            os.close(fd)


def _mount(
    libc: Any, src: bytes, target: bytes, fstype: bytes | None, flags: int, data: Any
) -> None:
    if libc.mount(src, target, fstype, flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


# ---------------------------------------------------------------------------
# Supervisor: one per job, root, trusted.
# ---------------------------------------------------------------------------


def _supervise(
    spec: dict[str, Any], res_fd: int, ctl: socket.socket, libc: Any, mode: str, shared_net: bool
) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # we wait for the child (wait4 below)
    flags = CLONE_NEWPID | CLONE_NEWNS | (0 if shared_net else CLONE_NEWNET)
    if mode == "namespaces" and libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        ctl.sendall(json.dumps({"error": f"unshare: {os.strerror(err)}"}).encode())
        return
    if mode != "namespaces":
        spec["fallback_workdir"] = tempfile.mkdtemp(prefix="amr-sandbox-")
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ctl.close()
            os.close(out_r)
            _child(spec, {"out": out_w, "res": res_fd}, libc, mode, shared_net)
        except BaseException:
            import traceback

            traceback.print_exc()  # fd 2 is the output pipe by now: the parent sees it
        finally:
            os._exit(70)
    os.close(res_fd)
    os.close(out_w)
    # The parent reads the child's CPU time from /proc to tell slow code from a busy machine.
    ctl.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    lim = spec["limits"]
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (ctl.fileno(), pidfd, out_r):
        poller.register(fd, select.POLLIN)
    hard_deadline = time.monotonic() + spec["hard_deadline_s"]
    killed: str | None = None
    head = bytearray()
    total = 0

    def kill(reason: str) -> None:
        nonlocal killed
        if killed is None:
            killed = reason
        try:
            if mode == "namespaces":
                os.kill(pid, signal.SIGKILL)  # PID 1: the kernel kills the namespace
            else:
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    exited = False
    while not exited:
        remaining = hard_deadline - time.monotonic()
        if remaining <= 0:
            kill("deadline")
            remaining = 1.0
        for fd, _ in poller.poll(int(remaining * 1000) + 1):
            if fd == pidfd:
                exited = True
            elif fd == out_r:
                data = os.read(out_r, 1 << 16)
                if not data:
                    poller.unregister(out_r)
                    continue
                total += len(data)
                if len(head) < lim["output_keep_bytes"]:
                    head += data[: lim["output_keep_bytes"] - len(head)]
                if total > lim["output_bytes"]:
                    kill("output")
                    poller.unregister(out_r)
            elif fd == ctl.fileno():
                ctl.recv(64)  # any byte or EOF means: stop now
                kill("parent")
                poller.unregister(fd)
    _, status, usage = os.wait4(pid, 0)
    if mode != "namespaces":
        kill("cleanup")  # best effort for the process group
        shutil.rmtree(spec["fallback_workdir"], ignore_errors=True)
    report = {
        "exit": os.waitstatus_to_exitcode(status),
        "killed": killed,
        "output": head.decode("utf-8", "replace"),
        "output_bytes": total,
        # CPU time of the child itself (its own children are not waited for by it).
        "cpu": usage.ru_utime + usage.ru_stime,
    }
    with contextlib.suppress(OSError):  # the parent may be gone; nothing to tell then
        ctl.sendall(json.dumps(report).encode())
        # Half-close, then wait for the parent to close: closing a unix socket with
        # unread bytes (a late "kill" byte) would reset it and lose the report.
        ctl.shutdown(socket.SHUT_WR)
        ctl.settimeout(10)
        while ctl.recv(64):
            pass


# ---------------------------------------------------------------------------
# Zygote: pre-warmed, forks one supervisor per job.
# ---------------------------------------------------------------------------


def _probe_isolation(libc: Any) -> str:
    """Return "namespaces" when PID+net+mount namespaces and uid switching work."""
    if os.geteuid() != 0:
        return "none"
    pid = os.fork()
    if pid == 0:
        try:
            if libc.unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS) != 0:
                os._exit(1)
            inner = os.fork()
            if inner == 0:
                try:
                    _mount(libc, b"none", b"/", None, MS_REC | MS_PRIVATE, None)
                    _mount(libc, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
                    _mount(libc, b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m")
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                    os._exit(0 if os.getpid() == 1 else 3)
                except BaseException:
                    os._exit(2)
            _, st = os.waitpid(inner, 0)
            os._exit(os.waitstatus_to_exitcode(st))
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    return "namespaces" if os.waitstatus_to_exitcode(status) == 0 else "none"


def _isolate_zygote(libc: Any, shared_net: bool) -> str | None:
    """Enter the mount (and network) namespaces every job shares; None or an error.

    The network namespace is new and empty (a loopback that stays down: only
    CAP_NET_ADMIN could raise it, and the job runs as nobody without it), so
    nothing is reachable from it. Creating one per job cost ~1 ms of the
    supervisor's CPU plus the kernel's asynchronous teardown (`cleanup_net`, on a
    kworker: CPU that no rusage shows). The mount setup that is the same for every
    job (everything private, homes hidden) is done here once; each job's own mount
    namespace starts as a copy of this one. The network namespace is shared only
    where Landlock can keep jobs apart in it (`_scope_to_this_job`); elsewhere every
    job still gets its own.
    """
    if libc.unshare(CLONE_NEWNS | (CLONE_NEWNET if shared_net else 0)) != 0:
        return f"unshare: {os.strerror(ctypes.get_errno())}"
    try:
        # Private mounts: nothing mounted here or in a job propagates to the host.
        _mount(libc, b"none", b"/", None, MS_REC | MS_PRIVATE, None)
        _hide_homes(libc)
    except OSError as exc:
        return str(exc)
    return None


def _recv_job(sock: socket.socket) -> tuple[bytearray, list[int]] | None:
    """The next job's body (still encoded) and its two fds; None once the parent is gone.

    The body is decoded in the supervisor, after the fork: objects decoded here
    would leave the zygote's heap bigger after they are freed (a job's inputs can
    take tens of MB), and every later fork would copy its page tables (an empty
    job's CPU went from 11.7 to 15.6 ms after one job with 2M ints).
    """
    head, fds, _, _ = socket.recv_fds(sock, HEADER.size, 4)
    if not head:
        return None
    while len(head) < HEADER.size:
        more = sock.recv(HEADER.size - len(head))
        if not more:
            return None
        head += more
    (size,) = HEADER.unpack(head)
    body = bytearray(size)  # one allocation: a big one is mmapped, and unmapped when freed
    view = memoryview(body)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        if not n:
            return None
        got += n
    view.release()
    return body, fds


def _reap(wait_s: float) -> None:
    """Reap finished supervisors; wait up to `wait_s` for the rest to finish."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def _warm() -> None:
    """Run once what every job runs, so that no fork redoes the lazy set-up.

    The first compile, exec, frame (CRC) and codec round trip of a process set
    up state lazily; done in each child they cost ~5 ms of CPU per job (measured
    on this machine's VM, mostly copy-on-write faults of the pages they touch),
    done here once they are inherited ready.
    """
    ns: dict[str, Any] = {}
    exec(compile("def f(a, b=1):\n    return [a, b]\nv = f(0)", "<warm>", "exec"), ns)
    frame(-1, b"v", 0, encode(marshal.loads(marshal.dumps([ns["v"], 1.0, "x", (None,)]))))
    decode(encode({"k": [1, 2.5]}))
    json.dumps(["x", 1])


def main(sock_fd: int, requested: str) -> None:
    # Pre-warm modules candidate code commonly imports, so forks skip the import.
    import collections  # noqa: F401
    import functools  # noqa: F401
    import heapq  # noqa: F401
    import itertools  # noqa: F401
    import math  # noqa: F401
    import re  # noqa: F401
    import string  # noqa: F401
    import typing  # noqa: F401

    _warm()
    libc = ctypes.CDLL(None, use_errno=True)
    # A fixed threshold (glibc raises it after each big free otherwise): buffers of
    # 128 KiB and more are mmapped and return to the system when freed, so a big
    # job leaves the zygote's heap, and the cost of every later fork, unchanged.
    with contextlib.suppress(AttributeError):  # not glibc
        libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    sock = socket.socket(fileno=sock_fd)
    mode = "none" if requested == "none" else _probe_isolation(libc)
    if requested == "namespaces" and mode != "namespaces":
        sock.sendall(json.dumps({"error": "namespaces unavailable (needs root)"}).encode() + b"\n")
        return
    shared_net = mode == "namespaces" and _landlock_abi(libc) >= 6
    if mode == "namespaces":
        error = _isolate_zygote(libc, shared_net)
        if error is not None:
            sock.sendall(json.dumps({"error": error}).encode() + b"\n")
            return
    # Objects that exist now live on in every fork: out of the collector's sight, a
    # collection in a supervisor or child does not write to (and so copy) their pages.
    gc.freeze()
    sock.sendall(json.dumps({"isolation": mode, "shared_net": shared_net}).encode() + b"\n")
    # Supervisors are reaped here rather than by SIGCHLD=SIG_IGN: a process the kernel
    # reaps for us adds no CPU time to our RUSAGE_CHILDREN, and the engine's accounting
    # (bench/e2e.py) would not see what the sandbox costs. Finished ones wait as zombies
    # until the next job arrives, at most `parallelism` of them.
    while True:
        _reap(0.0)
        job = _recv_job(sock)
        if job is None:
            _reap(2.0)  # the parent is closing: its jobs are done or being killed
            return
        body, fds = job
        if os.fork() == 0:
            code = 0
            ctl = socket.socket(fileno=fds[1])
            try:
                sock.close()
                spec = marshal.loads(body)  # made by the parent (trusted)
                del body
                _supervise(spec, fds[0], ctl, libc, mode, shared_net)
            except BaseException:
                import traceback

                code = 71
                with contextlib.suppress(OSError):
                    ctl.sendall(json.dumps({"error": traceback.format_exc()}).encode())
            finally:
                os._exit(code)
        del job, body
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
