"""The processes that run untrusted code: the zygote and one child per job.

Stdlib only: the zygote imports this file as a top-level module from its own
directory (``python -I -c BOOTSTRAP DIR FD ISOLATION TAG``, see `_sandbox`; TAG
only marks the command line of every process it forks) so that the package (and
the Rust extension) is never imported next to untrusted code; `main` runs it.
Imported rather than run as a script, it loads from cached bytecode: compiled
anew, the compiler's freed memory stayed mapped in the zygote for every fork to
copy. Running it as a script (``python -I _worker.py FD ISOLATION TAG``) works
too. The parent imports it as a module for the value codec (`encode`, `decode`).

Process tree::

    parent (asyncio) ── socketpair ──► zygote Z (root, trusted, pre-warmed; own mount
                                         │        ns, shared empty net ns; supervises
                                         │        every job in flight, `_Zygote`)
                                         ├─► child C of job 1 (PID 1 of a new PID ns,
                                         │    own mount ns, uid 65534, rlimits,
                                         │    Landlock scope) runs the code
                                         └─► child C of job 2 ...

One fork per job: Z forks C straight into a new PID namespace (`_PidNamespaces`:
unshare, fork, setns back to its own) and C makes its own mount namespace while
still root. Until 2026-11 a supervisor process per job stood between Z and C;
folding its duties into Z cut an empty job's process-tree CPU from 10.2-11.3 ms
to 6.7-6.8 ms (alternated, loaded machine; see the README).

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
  before. A namespace per job had cost ~1 ms of CPU plus the kernel's teardown
  of it on a kworker, which no rusage shows.
* The supervisor, Z itself. It is root and runs no job's code; C closes every fd
  it inherits from Z (other jobs' pipes and control sockets) before it drops to
  uid 65534, so a job can reach neither Z nor another job's channels; as nobody
  it can signal no root process, and its Landlock domain (where the kernel has
  scopes) no process outside the job.

What stays per job: the PID namespace (killing C, its PID 1, kills every process
of the job, `setsid` orphans included), the mount namespace with its /proc and
tmpfs, the uid switch, rlimits, the Landlock domain. The scrubbed environment
(PATH, HOME, TMPDIR, LANG only) and SIGINT's default action are set once in Z
and inherited; in "none" mode C sets HOME and TMPDIR to its own work dir.

* Z holds each job's control socket to the parent, watches C through a pidfd,
  drains C's stdout/stderr (capped) and SIGKILLs C on the parent's word, on the
  job's hard deadline, or when the output cap is exceeded. All of it runs in one
  poll loop whose every step is bounded, so one job's output flood, fork bomb or
  endless loop delays no other job. When C (PID 1) dies the kernel kills every
  process left in its PID namespace, including `setsid` orphans, so nothing
  outlives the job. C dies with Z (PR_SET_PDEATHSIG), so nothing outlives Z.
  In "none" isolation (no root) C leads a process group instead, which Z kills,
  and works in a temporary directory Z removes; `setsid` escapes that.
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
import signal
import socket
import struct
import sys
import time
from json.encoder import encode_basestring_ascii as _json_str
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
PR_SET_PDEATHSIG = 1
M_MMAP_THRESHOLD = -3  # malloc.h

NOBODY = 65534
# The job's whole environment; HOME and TMPDIR are its work dir (`_job_environment`).
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
NAMESPACES_WORKDIR = "/tmp/job"
# Home directories are replaced by empty tmpfs in the child (they hold keys and
# caches); the interpreter's own directories under them are bound back in.
HIDDEN_DIRS = ("/root", "/home")
# Job header: body size, hard deadline (s), output cap, output kept (bytes).
JOB_HEADER = struct.Struct("!QdQQ")
FRAME_MAGIC = b"\x00\xffAMR\x1e"
FRAME_FIELDS = struct.Struct("<iBQI")  # probe index (-1: the module), kind, micros, length
FRAME_CRC = struct.Struct("<I")


def frame(i: int, kind: bytes, micros: int, payload: bytes = b"") -> bytes:
    """One record for the result pipe (see the module docstring)."""
    fields = FRAME_FIELDS.pack(i, kind[0], micros, len(payload))
    return FRAME_MAGIC + fields + FRAME_CRC.pack(binascii.crc32(fields)) + payload


RESULT_FD = 3
ZYGOTE_FD = 4  # the child's pidfd of the zygote, until the code runs
EXIT_SETUP = 70  # the child failed before the code ran (its traceback is in the output)

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
    spec: dict[str, Any],
    fds: dict[str, int],
    libc: Any,
    mode: str,
    shared_net: bool,
    workdir: str | None,
) -> None:
    """Set this job up (root, trusted code so far), then drop privileges and run it.

    `fds` holds the output pipe ("out"), the result pipe ("res") and a pidfd of the
    zygote ("zygote"). In "namespaces" mode this process is already PID 1 of its own
    PID namespace (the zygote unshared it before the fork); `workdir` is the
    zygote's temporary directory in "none" mode.
    """
    # Lay out fds: 0=/dev/null, 1 and 2 = output pipe, 3 = result pipe, 4 = the
    # zygote's pidfd (closed before the code runs); close the rest, which include
    # every other job's pipes and sockets that the zygote holds.
    null = os.open("/dev/null", os.O_RDWR)
    # Move the fds above the target range first, so no dup2 below clobbers them.
    high = {k: fcntl.fcntl(fds[k], fcntl.F_DUPFD, 10) for k in ("out", "res", "zygote")}
    os.dup2(null, 0)
    os.dup2(high["out"], 1)
    os.dup2(high["out"], 2)
    os.dup2(high["res"], RESULT_FD)
    os.dup2(high["zygote"], ZYGOTE_FD)
    os.closerange(ZYGOTE_FD + 1, 1 << 16)

    lim = spec["limits"]
    if mode == "namespaces":
        # This job's own mount namespace (and network namespace where jobs cannot
        # share one, see `_isolate_zygote`), made here while still root so that the
        # zygote never leaves its own. It is a copy of the zygote's, where every
        # mount is already private and the homes hidden, so nothing mounted here
        # propagates anywhere.
        if libc.unshare(CLONE_NEWNS | (0 if shared_net else CLONE_NEWNET)) != 0:
            raise OSError(ctypes.get_errno(), "unshare (mount namespace)")
        # A fresh /proc shows only this job's processes; /tmp, /var/tmp, /dev/shm
        # become empty size-capped tmpfs, so writes there vanish with the job.
        _mount(libc, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        opts = f"size={lim['tmp_bytes']},mode=1777".encode()
        for path in (b"/tmp", b"/var/tmp", b"/dev/shm"):
            if os.path.isdir(path):
                _mount(libc, b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV, opts)
        workdir = NAMESPACES_WORKDIR
        os.mkdir(workdir, 0o700)
    else:
        assert workdir is not None
        os.setpgid(0, 0)  # lets the zygote kill the group (setsid escapes it)
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
    # Die with the zygote, which supervises this job (set after the uid change, which
    # clears it). If the zygote died before this line no signal will come: its pidfd
    # says so.
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if select.select([ZYGOTE_FD], [], [], 0)[0]:
        os._exit(EXIT_SETUP)
    os.close(ZYGOTE_FD)
    if shared_net:
        _scope_to_this_job(libc)

    if mode != "namespaces":  # the rest of the environment is the zygote's, set once
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
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


# The ruleset of every job's Landlock domain, made once (see `_scope_to_this_job`).
_JOB_SCOPES = _RulesetAttr(0, 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL)
_JOB_SCOPES_SIZE = ctypes.c_size_t(ctypes.sizeof(_JOB_SCOPES))


def _libc() -> Any:
    """The C library, with every function a child calls looked up and typed here.

    `CDLL.__getattr__` makes (and caches) a function object at a name's first use:
    done in each child, the lookup of `prctl` alone cost ~35 copy-on-write faults
    (~0.2 ms of CPU) per job.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for name in ("prctl", "unshare", "setns", "mount", "syscall"):
        getattr(libc, name)
    libc.syscall.restype = ctypes.c_long
    return libc


def _landlock_abi(libc: Any) -> int:
    """The kernel's Landlock ABI version (0 when Landlock is absent or disabled)."""
    abi = libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(abi), 0)


def _scope_to_this_job(libc: Any) -> None:
    """Cut this process and its descendants off from other jobs' abstract sockets.

    Jobs share one network namespace, and abstract unix socket names are scoped by
    network namespace; a Landlock domain per job scopes them (and signals) to the job.
    """
    fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(_JOB_SCOPES), _JOB_SCOPES_SIZE, 0)
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
# Zygote: pre-warmed, forks each job's child and supervises every job in flight.
# ---------------------------------------------------------------------------


def _probe_isolation(libc: Any) -> str:
    """Return "namespaces" when PID+net+mount namespaces and uid switching work."""
    if os.geteuid() != 0:
        return "none"
    pid = os.fork()
    if pid == 0:
        try:
            # The zygote's sequence per job: a PID namespace for the next child, back
            # to its own (`_PidNamespaces`), and a new one again.
            own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            if libc.unshare(CLONE_NEWPID) != 0 or libc.setns(own, CLONE_NEWPID) != 0:
                os._exit(1)
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
    nothing is reachable from it. Creating one per job cost ~1 ms of CPU plus
    the kernel's asynchronous teardown (`cleanup_net`, on a
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


class _PidNamespaces:
    """Gives each job's child a PID namespace of its own, from the zygote.

    `unshare(CLONE_NEWPID)` does not move the caller: it sets the namespace its
    next children start in (`pid_ns_for_children`), and the next fork becomes PID 1
    there. A second unshare then fails with EINVAL, as the kernel allows it only
    while `pid_ns_for_children` is the caller's active namespace (kernel/pid_namespace.c,
    `copy_pid_ns`). `setns` on the zygote's own namespace resets it (`pidns_install`
    accepts the active namespace or a descendant), after which unshare works again.
    So, per job: unshare, fork, setns back; every other fork of the zygote (none
    today) then stays in its namespace.
    """

    def __init__(self, libc: Any) -> None:
        self._libc = libc
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def next_child_in_new(self) -> None:
        if self._libc.unshare(CLONE_NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")

    def back_to_own(self) -> None:
        if self._libc.setns(self._own, CLONE_NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "setns(own PID namespace)")


class _Job:
    """One job in flight, as the zygote supervises it."""

    __slots__ = (
        "cap",
        "ctl",
        "deadline",
        "head",
        "keep",
        "killed",
        "linger_until",
        "out",
        "pid",
        "pidfd",
        "total",
        "workdir",
    )

    def __init__(
        self,
        pid: int,
        pidfd: int,
        out: int,
        ctl: socket.socket,
        deadline: float,
        cap: int,
        keep: int,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.out = out  # -1 once closed
        self.ctl = ctl
        self.deadline = deadline
        self.cap = cap
        self.keep = keep
        self.head = bytearray()
        self.total = 0
        self.killed: str | None = None
        self.workdir: str | None = None
        self.linger_until: float | None = None  # set once the report is sent


class _Zygote:
    """Forks one child per job and supervises every job in flight from one poll loop.

    Per job it holds the control socket to the parent, a pidfd of the child and the
    read end of the child's stdout/stderr pipe. It SIGKILLs the child on the
    parent's word (any byte or EOF on the control socket), on the job's hard
    deadline, or when the output passes its cap; when the child exits it reaps it
    and sends the report. Every read is bounded (64 KiB per event) and nothing
    waits on a job, so one job flooding output, fork-bombing or never exiting
    delays no other job's supervision.
    """

    def __init__(
        self,
        sock: socket.socket,
        libc: Any,
        mode: str,
        shared_net: bool,
        workdirs: _WorkDirs | None,
    ) -> None:
        self.sock = sock
        self.libc = libc
        self.mode = mode
        self.shared_net = shared_net
        self.workdirs = workdirs  # None in "namespaces" mode: each job has its own /tmp
        self.pidns = _PidNamespaces(libc) if mode == "namespaces" else None
        # The children watch it to die with the zygote (see `_child`).
        self.self_pidfd = os.pidfd_open(os.getpid())
        self.poller = select.poll()
        self.owner: dict[int, tuple[_Job | None, str]] = {}
        self.jobs: set[_Job] = set()
        self.accepting = True
        self._watch(sock.fileno(), None, "parent")

    def _watch(self, fd: int, job: _Job | None, what: str) -> None:
        self.owner[fd] = (job, what)
        self.poller.register(fd, select.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self.owner.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def serve(self) -> None:
        """Run jobs until the parent has gone and every job in flight is done."""
        while self.accepting or self.jobs:
            # Who owned each fd when it was reported: a handler may close an fd and a
            # new job reuse its number within this round; such an event is stale.
            ready = [(fd, self.owner.get(fd)) for fd, _ in self.poller.poll(self._timeout_ms())]
            for fd, entry in ready:
                if entry is None or self.owner.get(fd) is not entry:
                    continue
                job, what = entry
                if job is None:
                    self._accept()
                    continue
                try:
                    self._on_event(job, what)
                except Exception:  # a bug must not end the other jobs' supervision
                    self._abandon(job)
            now = time.monotonic()
            for job in list(self.jobs):
                if job.linger_until is not None:
                    if now >= job.linger_until:
                        self._close(job)
                elif now >= job.deadline:
                    self._kill(job, "deadline")
                    job.deadline = now + 1.0  # and again, should it not be gone by then

    def _timeout_ms(self) -> int:
        if not self.jobs:
            return -1
        soonest = min(
            j.linger_until if j.linger_until is not None else j.deadline for j in self.jobs
        )
        return max(int((soonest - time.monotonic()) * 1000) + 1, 0)

    def _accept(self) -> None:
        try:
            job = _recv_job(self.sock)
        except OSError:
            job = None
        if job is None:  # the parent is closing: finish the jobs in flight, take no more
            self.accepting = False
            self._unwatch(self.sock.fileno())
            return
        body, fds, (hard_deadline_s, cap, keep) = job
        res_w, ctl_fd = fds
        ctl = socket.socket(fileno=ctl_fd)
        try:
            self._start(body, res_w, ctl, hard_deadline_s, cap, keep)
        except Exception:
            import traceback

            with contextlib.suppress(OSError):
                ctl.sendall(json.dumps({"error": traceback.format_exc()}).encode())
            ctl.close()
        finally:
            os.close(res_w)

    def _start(
        self,
        body: bytearray,
        res_w: int,
        ctl: socket.socket,
        hard_deadline_s: float,
        cap: int,
        keep: int,
    ) -> None:
        workdir = self.workdirs.make() if self.workdirs is not None else None
        out_r, out_w = os.pipe()
        pid = -1
        try:
            if self.pidns is not None:
                self.pidns.next_child_in_new()
            try:
                pid = os.fork()
            finally:
                if self.pidns is not None and pid != 0:
                    self.pidns.back_to_own()
            if pid == 0:
                try:
                    spec = marshal.loads(body)  # made by the parent (trusted)
                    del body
                    fds = {"out": out_w, "res": res_w, "zygote": self.self_pidfd}
                    _child(spec, fds, self.libc, self.mode, self.shared_net, workdir)
                except BaseException:
                    import traceback

                    traceback.print_exc()  # fd 2 is the output pipe by now: the parent sees it
                finally:
                    os._exit(EXIT_SETUP)
        except BaseException:
            os.close(out_r)
            if workdir is not None:
                _WorkDirs.remove(workdir)
            raise
        finally:
            os.close(out_w)
        if self.mode != "namespaces":
            with contextlib.suppress(OSError):  # also set by the child: no window to kill it
                os.setpgid(pid, pid)
        job = _Job(
            pid, os.pidfd_open(pid), out_r, ctl, time.monotonic() + hard_deadline_s, cap, keep
        )
        job.workdir = workdir
        self.jobs.add(job)
        os.set_blocking(out_r, False)
        # The parent reads the child's CPU time from /proc to tell slow code from a busy machine.
        with contextlib.suppress(OSError):
            ctl.sendall(b'{"pid": %d}\n' % pid)
        self._watch(job.pidfd, job, "exit")
        self._watch(out_r, job, "out")
        self._watch(ctl.fileno(), job, "ctl")

    def _on_event(self, job: _Job, what: str) -> None:
        if what == "out":
            self._drain(job, once=True)
        elif what == "ctl":
            try:
                data = job.ctl.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if job.linger_until is not None:
                if not data:  # the parent has the report and closed: done
                    self._close(job)
            else:
                self._kill(job, "parent")  # any byte or EOF means: stop now
                self._unwatch(job.ctl.fileno())
        elif what == "exit":
            self._finish(job)

    def _drain(self, job: _Job, *, once: bool) -> None:
        """Read the child's output (one chunk, or all there is), keeping the head."""
        while job.out >= 0:
            try:
                data = os.read(job.out, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self._close_out(job)
                return
            job.total += len(data)
            if len(job.head) < job.keep:
                job.head += data[: job.keep - len(job.head)]
            if job.total > job.cap:
                self._kill(job, "output")
                self._close_out(job)
                return
            if once:
                return

    def _close_out(self, job: _Job) -> None:
        if job.out >= 0:
            self._unwatch(job.out)
            os.close(job.out)
            job.out = -1

    def _kill(self, job: _Job, reason: str) -> None:
        if job.killed is None:
            job.killed = reason
        if job.pidfd >= 0:  # not reaped yet (a pidfd cannot hit a reused PID)
            with contextlib.suppress(ProcessLookupError):
                # PID 1 of its namespace: the kernel kills every process in it.
                signal.pidfd_send_signal(job.pidfd, signal.SIGKILL)
        if self.mode != "namespaces":
            self._kill_group(job)

    @staticmethod
    def _kill_group(job: _Job) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)

    def _finish(self, job: _Job) -> None:
        """The child has exited: reap it, send the report, wait for the parent to close."""
        pid, status, usage = os.wait4(job.pid, os.WNOHANG)
        if pid == 0:
            return  # not yet (the pidfd is readable only once it has exited)
        self._unwatch(job.pidfd)
        os.close(job.pidfd)
        job.pidfd = -1
        self._drain(job, once=False)  # what it wrote before it died
        self._close_out(job)
        if self.mode != "namespaces":
            self._kill_group(job)  # best effort for what is left of the process group
            if job.workdir is not None:
                _WorkDirs.remove(job.workdir)
        report = report_json(
            os.waitstatus_to_exitcode(status),
            job.killed,
            job.head.decode("utf-8", "replace"),
            job.total,
            usage.ru_utime + usage.ru_stime,  # CPU of the child (and descendants it reaped)
        )
        try:
            job.ctl.sendall(report)
            # Half-close, then wait for the parent to close: closing a unix socket with
            # unread bytes (a late "kill" byte) would reset it and lose the report.
            job.ctl.shutdown(socket.SHUT_WR)
        except OSError:  # the parent is gone; nothing to tell then
            self._close(job)
            return
        job.linger_until = time.monotonic() + 10.0
        if job.ctl.fileno() not in self.owner:
            self._watch(job.ctl.fileno(), job, "ctl")

    def _abandon(self, job: _Job) -> None:
        """Supervising this job failed (a bug): kill it, tell the parent, let it go."""
        import traceback

        self._kill(job, "error")
        with contextlib.suppress(OSError):
            job.ctl.sendall(json.dumps({"error": traceback.format_exc()}).encode())
        if job.pidfd >= 0:
            self._unwatch(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(job.pid, 0)  # SIGKILLed above: quick
        self._close_out(job)
        if job.workdir is not None:
            _WorkDirs.remove(job.workdir)
        self._close(job)

    def _close(self, job: _Job) -> None:
        self._unwatch(job.ctl.fileno())
        job.ctl.close()
        self.jobs.discard(job)


def _job_environment(workdir: str) -> None:
    """Make the environment the one every job sees: PATH, HOME, TMPDIR and LANG only.

    Called once by the zygote (children inherit it) rather than in every child:
    clearing and refilling `os.environ` there ran ~25 Python functions the zygote
    had not touched since the fork, ~110 copy-on-write faults and 0.6-0.7 ms of
    CPU per job. In "none" mode each child then sets only HOME and TMPDIR to its
    own work dir.
    """
    os.environ.clear()
    os.environ.update({"PATH": JOB_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})


class _WorkDirs:
    """Work directories of "none" mode: made and removed by the zygote.

    Not `tempfile.mkdtemp`: tempfile imports `random`, whose fork hook reseeds it in
    every child (~50 copy-on-write faults, 0.25 ms of CPU per job). `os.mkdir`
    fails on an existing name, so a name in use is never taken.
    """

    def __init__(self, base: str) -> None:
        self._prefix = os.path.join(base, f"amr-sandbox-{os.getpid()}-{os.urandom(4).hex()}-")
        self._next = 0

    def make(self) -> str:
        while True:
            self._next += 1
            path = f"{self._prefix}{self._next}"
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            return path

    @staticmethod
    def remove(path: str) -> None:
        try:
            os.rmdir(path)  # most jobs leave their work dir empty
        except OSError:
            # Imported only here: shutil brings zlib, bz2 and lzma (26 of the zygote's
            # 136 memory mappings), which every fork would copy and every exit unmap.
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def report_json(exit_code: int, killed: str | None, output: str, size: int, cpu: float) -> bytes:
    """A finished job's report for the parent: one JSON object.

    Formatted here rather than by `json.dumps`, whose Python-level encoder was the
    only user of its pages in the zygote's per-job path: after every fork the
    zygote copies each page it writes to, ~30 faults per job for that encoder.
    """
    return (
        f'{{"exit": {exit_code:d}, "killed": {"null" if killed is None else _json_str(killed)}, '
        f'"output": {_json_str(output)}, "output_bytes": {size:d}, "cpu": {cpu!r}}}'
    ).encode()


def _recv_job(
    sock: socket.socket,
) -> tuple[bytearray, list[int], tuple[float, int, int]] | None:
    """The next job's body (still encoded), its two fds and its supervision limits.

    None once the parent is gone. The body is decoded in the child, after the
    fork: objects decoded here would leave the zygote's heap bigger after they are
    freed (a job's inputs can take tens of MB), and every later fork would copy
    its page tables (an empty job's CPU went from 11.7 to 15.6 ms after one job
    with 2M ints). The header carries what the zygote needs itself.
    """
    head, fds, _, _ = socket.recv_fds(sock, JOB_HEADER.size, 4)
    if not head:
        for fd in fds:
            os.close(fd)
        return None
    while len(head) < JOB_HEADER.size:
        more = sock.recv(JOB_HEADER.size - len(head))
        if not more:
            return None
        head += more
    if len(fds) != 2:
        raise RuntimeError(f"a job came with {len(fds)} fds, not 2")
    size, hard_deadline_s, cap, keep = JOB_HEADER.unpack(head)
    body = bytearray(size)  # one allocation: a big one is mmapped, and unmapped when freed
    view = memoryview(body)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        if not n:
            return None
        got += n
    view.release()
    return body, fds, (hard_deadline_s, cap, keep)


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
    libc = _libc()
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
    workdirs = None if mode == "namespaces" else _WorkDirs(os.environ.get("TMPDIR") or "/tmp")
    _job_environment(NAMESPACES_WORKDIR)  # "none" mode: each child sets its own dir
    # SIGINT kills (no KeyboardInterrupt for the code to catch); set here for every
    # child, as each job's signal.signal call cost ~40 copy-on-write faults. The
    # zygote then dies at once on a terminal's Ctrl-C, its children with it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Objects that exist now live on in every fork: out of the collector's sight, a
    # collection in a child does not write to (and so copy) their pages.
    gc.freeze()
    sock.sendall(json.dumps({"isolation": mode, "shared_net": shared_net}).encode() + b"\n")
    # Children are reaped by the zygote (wait4) rather than by SIGCHLD=SIG_IGN: a
    # process the kernel reaps for us adds no CPU time to our RUSAGE_CHILDREN, and
    # the engine's accounting (bench/e2e.py) would not see what the sandbox costs.
    _Zygote(sock, libc, mode, shared_net, workdirs).serve()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
