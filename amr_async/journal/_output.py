"""The output JSONL file, written so that the journal always knows which lines are whole.

The order that makes output exactly-once (the journal is the truth). For each group of
journal rows the writer thread:

1. appends the lines of the group's finished items to the output file (no fsync: see
   below);
2. commits, in one transaction, the group's rows: each finished item's record with
   `items.state = 'done'` and `emitted = 1`, and `runs.output_offset` = the file's new
   length.

A crash between or inside the steps is repaired on resume by `RunJournal.attach_output`:

- file longer than the committed offset (crash between 1 and 2, or a partial line from a
  crash inside 1): truncate to the offset. The cut lines belong to items whose records
  were not committed either, so those items run again (their teacher answers are already
  journaled: nothing is bought twice) and are appended once then;
- file shorter than the offset (the file lost its tail, e.g. a power cut on a system that
  lost the page cache, or someone edited it): scan it, keep its whole lines, cut any partial
  last line, mark exactly the items whose ids appear as emitted and every other finished
  item as not emitted, so they are appended again;
- equal: nothing to do; finished items still marked `emitted = 0` (a run that had no
  output file, or an output write that failed) are appended.

Because the shorter-file case is repaired by scanning, the output needs no fsync per
group (8 ms each on the development machine): after a power cut that lost its tail the
scan re-emits exactly the lost lines.

Every line is one JSON object with an `"id"` field; the scan relies on that.
"""

from __future__ import annotations

import contextlib
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

        On failure the file is cut back to where it was, so no partial line stays.

        Args:
            lines: JSON records.

        Returns:
            The file's new length, to be committed as the output offset.

        Raises:
            JournalStorageError: the write failed (JournalDiskFullError when out of space).
        """
        if not lines:
            return self.offset
        data = b"\n".join(lines) + b"\n"
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

    def cut(self, offset: int) -> None:
        """Take back what was appended after `offset` (its rows were not committed).

        Best effort: if the truncation fails, resume cuts the file to the committed
        offset anyway.
        """
        self.offset = offset
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, offset)

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
