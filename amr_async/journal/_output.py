"""The output JSONL file, written so that the journal always knows which lines are whole.

The order that makes output exactly-once (the journal is the truth):

1. An item's final record is committed to the journal (`items.state = 'done'`,
   `items.record`, `emitted = 0`).
2. Its line is appended to the output file (no fsync of its own: see below).
3. `items.emitted = 1` and `runs.output_offset` (the file's new length) are committed,
   together with the next group of journal rows.

A crash between any two steps is repaired on resume by `reconcile`:

- file longer than the committed offset (crash between 2 and 3, or a partial line from a
  crash inside 2): truncate to the offset; the items whose lines were cut are still
  `emitted = 0` and are appended again;
- file shorter than the offset (the file lost its tail, e.g. a power cut on a system that
  lost the page cache, or someone edited it): scan it, keep its whole lines, cut any partial
  last line, mark exactly the items whose ids appear as emitted and every other finished
  item as not emitted, so they are appended again;
- equal: nothing to do.

Because the shorter-file case is repaired by scanning, the output needs no fsync per
group (8 ms each on the development machine): after a power cut that lost its tail the
scan re-emits exactly the lost lines.

Every line is one JSON object with an `"id"` field; the scan relies on that.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import orjson

from amr_async.journal._errors import JournalDiskFullError, JournalStorageError

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def storage_error(exc: OSError, what: str) -> JournalStorageError:
    """Translate an OSError from writing `what` into the journal's error tree."""
    if exc.errno in _NO_SPACE:
        return JournalDiskFullError(
            f"no space left writing {what} ({os.strerror(exc.errno or 0)}): free space or "
            "raise the file-size limit, then run again with --resume"
        )
    return JournalStorageError(f"cannot write {what}: {exc.strerror or exc}")


class OutputSink:
    """Appends whole lines to the output file; used only by the journal's writer thread."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        return self._fd

    def append(self, lines: Sequence[bytes]) -> int:
        """Write `lines` (each without its newline) at the end of what was written.

        On failure the file is cut back to the committed offset, so no partial line stays.

        Args:
            lines: JSON records.

        Returns:
            The file's new length, to be committed as the output offset.

        Raises:
            JournalStorageError: the write failed (JournalDiskFullError when out of space).
        """
        data = b"".join(line + b"\n" for line in lines)
        try:
            fd = self._open()
            view = memoryview(data)
            pos = self.offset
            while view:
                written = os.pwrite(fd, view, pos)
                view = view[written:]
                pos += written
        except OSError as exc:
            try:
                if self._fd is not None:
                    os.ftruncate(self._fd, self.offset)
            except OSError:
                pass  # resume truncates to the committed offset anyway
            raise storage_error(exc, f"output {self.path}") from None
        self.offset = pos
        return pos

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def scan_ids(path: Path) -> tuple[int, list[str]]:
    """The length of the trustworthy prefix of `path` and the ids on its lines.

    The prefix ends before the first line that is partial, does not parse as a JSON object
    or has no string `id` (after a power cut a file's tail may be missing or zero-filled);
    everything after it is cut and re-emitted.

    Args:
        path: an output file.

    Returns:
        (length of the prefix in bytes, ids of its lines in file order).
    """
    data = path.read_bytes() if path.exists() else b""
    ids: list[str] = []
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        try:
            obj = orjson.loads(data[pos:nl])
        except orjson.JSONDecodeError:
            break
        if not (isinstance(obj, dict) and isinstance(obj.get("id"), str)):
            break
        ids.append(obj["id"])
        pos = nl + 1
    return pos, ids
