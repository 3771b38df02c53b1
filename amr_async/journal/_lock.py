"""One writer per journal: an advisory lock on `<journal>.lock`.

`flock` is released by the kernel when the holder dies, even by SIGKILL, so a crash never
leaves a stale lock behind; the holder's pid is written into the file only to name it in
the refusal message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from amr_async.journal._errors import JournalLockedError


class WriterLock:
    """An exclusive, non-blocking lock held for a journal's lifetime.

    Not shared between threads; the journal owns one.
    """

    def __init__(self, journal_path: Path) -> None:
        self.path = journal_path.with_name(journal_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or fail at once.

        Raises:
            JournalLockedError: another process holds it; the message names its pid.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalLockedError(
                f"journal {self.path.with_suffix('')} is already open for writing by another "
                f"process (pid {holder}, lock file {self.path}); wait for it to finish or stop it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the pid only names the holder in messages; a full disk must not stop us here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays; its content is stale but harmless."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
