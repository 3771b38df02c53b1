"""Streaming the input JSONL: one validated item or one reject per line.

Each line is a JSON object with a non-empty string `instruction` and an optional `id`
(string or integer). A line without an id gets `sha256:` + the first 16 hex digits of the
SHA-256 of the line's bytes (trailing whitespace removed), so the id is stable across runs
of the same file; two identical id-less lines therefore share an id, and the second is
rejected as a duplicate. Blank lines are skipped. A bad line becomes a `Reject` naming its
line number and reason; reading goes on.

The reader is blocking (plain file I/O): the runner calls it on a worker thread, one batch
of lines at a time, so memory stays bounded by the batch size whatever the input size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any real instruction, far below RAM


@dataclass(slots=True, frozen=True)
class InputItem:
    """One valid input line."""

    item_id: str
    line_no: int
    instruction: str


@dataclass(slots=True, frozen=True)
class Reject:
    """One input line that cannot be processed, and why."""

    line_no: int
    reason: str
    record: dict[str, Any] | None = None  # a dropped item's whole record, kept here

    def to_json(self, path: Path) -> bytes:
        row: dict[str, Any] = {"file": str(path), "line": self.line_no, "reason": self.reason}
        if self.record is not None:
            row["record"] = self.record
        return orjson.dumps(row)


def parse_line(raw: bytes, line_no: int) -> InputItem | Reject | None:
    """Validate one line (without its newline); None for a blank line.

    Args:
        raw: the line's bytes.
        line_no: its 1-based number, for messages.

    Returns:
        The item, a reject naming the problem, or None.
    """
    stripped = raw.rstrip()
    if not stripped:
        return None
    try:
        obj = orjson.loads(stripped)
    except orjson.JSONDecodeError as exc:
        return Reject(line_no, f"not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return Reject(line_no, f"expected a JSON object, got {type(obj).__name__}")
    instruction = obj.get("instruction")
    if instruction is None:
        return Reject(line_no, "field 'instruction': missing")
    if not isinstance(instruction, str):
        return Reject(line_no, f"field 'instruction': expected a string, got {_kind(instruction)}")
    if not instruction.strip():
        return Reject(line_no, "field 'instruction': empty")
    raw_id = obj.get("id")
    if raw_id is None:
        item_id = "sha256:" + hashlib.sha256(stripped).hexdigest()[:16]
    elif isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return Reject(line_no, f"field 'id': expected a string or integer, got {_kind(raw_id)}")
    else:
        item_id = str(raw_id)
        if not item_id.strip():
            return Reject(line_no, "field 'id': empty")
    return InputItem(item_id, line_no, instruction)


def _kind(value: object) -> str:
    return "a boolean" if isinstance(value, bool) else type(value).__name__


class InputReader:
    """Reads an input JSONL in batches and writes the rejects file. Blocking; one thread.

    Args:
        path: the input JSONL.
        rejects_path: where rejects go (rewritten from scratch on every run and resume,
            since every run reads the whole input again).
        max_line_bytes: longer lines are rejected without being held in memory.
    """

    def __init__(
        self, path: Path, rejects_path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        self.path = path
        self.rejects_path = rejects_path
        self.max_line_bytes = max_line_bytes
        self._file: BinaryIO = path.open("rb")
        self._rejects: BinaryIO | None = None
        self._line_no = 0
        self.rejected = 0

    def read_batch(self, size: int) -> list[InputItem | Reject]:
        """Up to `size` parsed lines (blank lines skipped); empty at the end of the file."""
        out: list[InputItem | Reject] = []
        while len(out) < size:
            raw = self._file.readline(self.max_line_bytes + 1)
            if not raw:
                break
            self._line_no += 1
            if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                skipped = len(raw) + self._skip_rest_of_line()
                out.append(
                    Reject(
                        self._line_no,
                        f"line is {skipped} bytes, over the {self.max_line_bytes}-byte cap",
                    )
                )
                continue
            parsed = parse_line(raw, self._line_no)
            if parsed is not None:
                out.append(parsed)
        return out

    def _skip_rest_of_line(self) -> int:
        skipped = 0
        while True:
            chunk = self._file.readline(1 << 16)
            skipped += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return skipped

    def write_rejects(self, rejects: list[Reject]) -> None:
        """Append rejects (one JSON line each: file, line, reason)."""
        if not rejects:
            return
        if self._rejects is None:
            self._rejects = self.rejects_path.open("wb")
        self._rejects.write(b"".join(r.to_json(self.path) + b"\n" for r in rejects))
        self.rejected += len(rejects)

    def close(self) -> None:
        """Close the input, flush the rejects; remove a stale rejects file if none now."""
        self._file.close()
        if self._rejects is not None:
            self._rejects.close()
        elif self.rejects_path.exists():
            self.rejects_path.unlink()
