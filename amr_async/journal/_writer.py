"""The journal's single writer thread with group commit.

Every write goes to one thread that owns the only writing connection. Producers append
rows to a shared list; the thread takes the whole list and commits it in one transaction,
so one commit (and, with `synchronous=FULL`, one fsync) pays for the whole group.

A batch closes `max_delay_s` (10 ms by default) after its first row, at once when it
reaches `max_rows`, for a `flush()` or on `close()`. The window trades a few milliseconds
of latency per journaled answer (teacher calls take seconds) for fewer, larger commits.

Costs that matter on the hot path, measured (see `bench/journal.py`):

- The thread is woken once per batch, not once per row: only the row that finds the list
  empty (or fills it, or flushes) notifies it. A wake-up per row cost two GIL hand-offs
  per row between the event loop and this thread.
- Rows of a `BulkInsert` statement are written many per statement
  (`INSERT ... VALUES (...), (...)`): the sqlite3 module releases the GIL around every
  `sqlite3_step`, so `executemany` gave the GIL away once per row and waited to get it
  back from a busy event loop (up to the 5 ms switch interval) each time.
- Waiting callers are settled with one `call_soon_threadsafe` per batch (per loop).

Rows may carry an output line (`Emit`): the batch's lines are appended to the output
file *before* its transaction, and the same transaction commits the records, their
`emitted` flag and the file's new length, so no second transaction per batch is needed
(the order and its crash cases are in `_output`).

After a storage error the writer fails every later row at once with the same error, so no
awaiting caller hangs and nothing is written past the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from amr_async.journal._errors import (
    JournalClosedError,
    JournalDiskFullError,
    JournalError,
    JournalStorageError,
)
from amr_async.journal._output import OutputSink

# SQLite primary result codes (sqlite_errorcode may be an extended code: low byte is primary).
_SQLITE_IOERR = 10
_SQLITE_FULL = 13

# Rows per multi-row statement: chunks are powers of two up to this, so a batch needs at
# most ~9 statements per table and the statement cache holds them all. (One statement of
# exactly the batch's size per table saves a statement or two per batch, but preparing a
# statement of a size not seen before costs ~20 us per row, more than it saves until the
# cache is warm: measured +40% CPU per journaled call in `bench/journal.py`.)
_MAX_BULK_ROWS = 256


@dataclass(slots=True, frozen=True)
class BulkInsert:
    """An INSERT the writer may carry out for many rows in one statement.

    The bulk statements of one batch are grouped by statement, so each must write a
    table no other bulk statement writes (their relative order then does not matter);
    a plain SQL row between them is a barrier that keeps the order around it.

    Attributes:
        head: the statement up to and including `VALUES`.
        width: parameters per row.
        tail: what follows the rows (e.g. an `ON CONFLICT` clause).
    """

    head: str
    width: int
    tail: str = ""

    def sql(self, rows: int) -> str:
        """The statement for `rows` rows."""
        return _bulk_sql(self.head, self.width, self.tail, rows)


def _check_width(sql: Statement | None, params: Sequence[object]) -> None:
    """Refuse a bulk row of the wrong width here, not as a storage error at commit."""
    if isinstance(sql, BulkInsert) and len(params) != sql.width:
        raise ValueError(
            f"{sql.head.split('(')[0].strip()}: {len(params)} values, expected {sql.width}"
        )


@functools.lru_cache(maxsize=64)
def _bulk_sql(head: str, width: int, tail: str, rows: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} {', '.join([one] * rows)}{tail}"


@dataclass(slots=True)
class Emit:
    """An output line to append with its row.

    When the row has SQL, its last parameter is its `emitted` flag, given as 1: the
    writer turns it into 0 when the line was not appended (no output file, or the append
    failed), so the common case costs no new tuple.
    """

    run_id: str
    item_id: str
    line: bytes


Statement = str | BulkInsert


@dataclass(slots=True)
class _Row:
    sql: Statement | None
    params: Sequence[object]
    emit: Emit | None
    future: asyncio.Future[None] | None
    event: threading.Event | None = None


def open_connection(path: Path, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection in autocommit mode with the journal's pragmas (WAL, busy timeout).

    Args:
        path: the journal file.
        synchronous: `NORMAL` (default) makes each commit durable against the process
            crashing or being killed (the commit is in the WAL file, which the OS writes
            back); `FULL` also against power loss or an OS crash, at one fsync per commit.

    Returns:
        The connection; the caller closes it.
    """
    if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def sqlite_storage_error(exc: sqlite3.Error, what: str) -> JournalError:
    """Translate a failed SQLite write into the journal's error tree.

    SQLite reports ENOSPC as SQLITE_FULL but a file-size limit (EFBIG) as a write I/O
    error; both mean "no room", so both become `JournalDiskFullError`.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (_SQLITE_FULL, _SQLITE_IOERR):
        return JournalDiskFullError(
            f"no space left writing {what} ({exc}): free space or raise the file-size "
            "limit, then run again with --resume; everything committed so far is intact"
        )
    return JournalStorageError(f"cannot write {what}: {exc}")


class GroupCommitWriter:
    """The one thread that writes the journal.

    `submit*` may be called from any thread; `submit_async` and `flush` from a running
    event loop. Waiters are settled on their own loop via `call_soon_threadsafe`, one
    callback per batch per loop.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = 2000,
        max_delay_s: float = 0.01,
        synchronous: str = "NORMAL",
        sink_for: Callable[[str], OutputSink | None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._path = path
        self._max_rows = max_rows
        self._max_delay_s = max_delay_s
        self._synchronous = synchronous
        self._sink_for = sink_for or (lambda run_id: None)
        self._thread = threading.Thread(target=self._main, name="amr-journal-writer", daemon=True)
        # Shared with producers, guarded by `_lock` (the condition's lock): the rows of the
        # next batch, when its first row came, and whether it must go without waiting out
        # the window. Producers take the bare lock (`with` on a Lock runs in C; on a
        # Condition it runs Python code, twice per row on the event loop).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._rows: list[_Row] = []
        self._first_at = 0.0
        self._urgent = False
        self._stopping = False
        self._closed = False
        self.error: JournalError | None = None
        self.rows_committed = 0
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The writer thread (benchmarks read its CPU time)."""
        return self._thread

    # -------------------------------------------------------------- producers

    def submit(
        self, sql: Statement | None, params: Sequence[object] = (), emit: Emit | None = None
    ) -> None:
        """Queue a row without waiting; it is committed with the next batch."""
        self._check_open()
        _check_width(sql, params)
        self._put(_Row(sql, params, emit, None), urgent=False)

    def submit_async(
        self, sql: Statement | None, params: Sequence[object] = (), emit: Emit | None = None
    ) -> asyncio.Future[None]:
        """Queue a row; the future resolves once it is committed (or fails with the error)."""
        self._check_open()
        _check_width(sql, params)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            future.set_exception(self.error)
            return future
        self._put(_Row(sql, params, emit, future), urgent=sql is None and emit is None)
        return future

    async def flush(self) -> None:
        """Wait until every row queued before this call is committed."""
        await self.submit_async(None)

    def flush_sync(self) -> None:
        """Block until every row queued before this call is committed; raise a stored error."""
        self._check_open()
        event = threading.Event()
        self._put(_Row(None, (), None, None, event), urgent=True)
        event.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Commit what is queued, stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def _check_open(self) -> None:
        if self._closed:
            raise JournalClosedError("the journal is closed")

    def _put(self, row: _Row, *, urgent: bool) -> None:
        with self._lock:
            rows = self._rows
            rows.append(row)
            if len(rows) == 1:
                self._first_at = time.monotonic()
            elif not urgent and len(rows) < self._max_rows:
                return  # the thread already knows of this batch: no wake-up per row
            if urgent or len(rows) >= self._max_rows:
                self._urgent = True
            self._cond.notify()

    # ------------------------------------------------------------ the thread

    def _main(self) -> None:
        conn = open_connection(self._path, synchronous=self._synchronous)
        try:
            while (batch := self._next_batch()) is not None:
                self._commit(conn, batch)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _next_batch(self) -> list[_Row] | None:
        """Wait for rows and for their window to close; None once closed and drained."""
        with self._cond:
            while not self._rows:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._first_at + self._max_delay_s
            while not (self._urgent or self._stopping):
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            rows = self._rows
            if len(rows) <= self._max_rows:
                self._rows = []
                self._urgent = False
                return rows
            # More than a batch queued (the thread fell behind): the rest goes next, at once.
            self._rows = rows[self._max_rows :]
            return rows[: self._max_rows]

    def _commit(self, conn: sqlite3.Connection, batch: list[_Row]) -> None:
        if self.error is not None:
            self._settle(batch, self.error, self.error)
            return
        appended: dict[str, tuple[OutputSink, int]] = {}
        output_error: JournalError | None = None
        try:
            appended = self._append_lines(batch)
        except JournalStorageError as exc:
            # The output is full: still commit the batch (its answers are paid for),
            # with its lines unemitted (resume writes them), then stop.
            output_error = exc
        try:
            self._write(conn, batch, appended)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for sink, old in appended.values():
                sink.cut(old)  # resume would cut them anyway: the offset is not committed
            error = self.error = sqlite_storage_error(exc, f"journal {self._path}")
            self._settle(batch, error, error)
            return
        # Set before waking anyone, so that a woken `flush_sync` sees it.
        self.error = output_error
        # Committed; if the output failed, the rows with lines report it.
        self._settle(batch, None, output_error)

    def _append_lines(self, batch: list[_Row]) -> dict[str, tuple[OutputSink, int]]:
        """Append the batch's output lines; returns run -> (sink, its offset before).

        Raises:
            JournalStorageError: a write failed; every file of the batch is cut back to
                where it was, so none of its lines counts as emitted.
        """
        by_run: dict[str, list[bytes]] = {}
        for row in batch:
            if row.emit is not None:
                by_run.setdefault(row.emit.run_id, []).append(row.emit.line)
        appended: dict[str, tuple[OutputSink, int]] = {}
        try:
            for run_id, lines in by_run.items():
                sink = self._sink_for(run_id)  # owned (and closed) by the journal
                if sink is None:
                    continue
                old = sink.offset
                sink.append(lines)
                appended[run_id] = (sink, old)
        except JournalStorageError:
            for sink, old in appended.values():
                sink.cut(old)
            raise
        return appended

    def _write(
        self,
        conn: sqlite3.Connection,
        batch: list[_Row],
        appended: dict[str, tuple[OutputSink, int]],
    ) -> None:
        if not any(r.sql is not None for r in batch) and not appended:
            return
        conn.execute("BEGIN IMMEDIATE")
        bulk: dict[BulkInsert, list[Sequence[object]]] = {}
        plain: list[tuple[str, Sequence[object]]] = []
        emitted: list[tuple[str, str]] = []  # lines appended for rows without SQL
        rows = 0
        for row in batch:
            sql, params, emit = row.sql, row.params, row.emit
            if emit is not None:
                done = emit.run_id in appended
                if sql is None:
                    if done:
                        emitted.append((emit.run_id, emit.item_id))
                    continue
                if not done:
                    params = (*params[:-1], 0)
            if sql is None:
                continue
            rows += 1
            if isinstance(sql, BulkInsert):
                if plain:
                    _execute_plain(conn, plain)
                    plain = []
                bulk.setdefault(sql, []).append(params)
            else:
                if bulk:
                    _execute_bulk(conn, bulk)
                    bulk = {}
                plain.append((sql, params))
        _execute_bulk(conn, bulk)
        _execute_plain(conn, plain)
        if emitted:
            conn.executemany(
                "UPDATE items SET emitted = 1 WHERE run_id = ? AND item_id = ?", emitted
            )
        for run_id, (sink, _) in appended.items():
            conn.execute(
                "UPDATE runs SET output_offset = ? WHERE run_id = ?", (sink.offset, run_id)
            )
        conn.execute("COMMIT")
        self.rows_committed += rows
        self.batches += 1

    @staticmethod
    def _settle(
        batch: list[_Row], error: JournalError | None, emit_error: JournalError | None
    ) -> None:
        """Wake the batch's waiters: `error` for plain rows, `emit_error` for rows with a line.

        One callback per loop: (futures to resolve, futures to fail).
        """
        by_loop: dict[
            asyncio.AbstractEventLoop, tuple[list[asyncio.Future[None]], list[asyncio.Future[None]]]
        ] = {}
        for row in batch:
            future = row.future
            if future is not None:
                loop = future.get_loop()
                if (lists := by_loop.get(loop)) is None:
                    lists = by_loop[loop] = ([], [])
                failed = (error if row.emit is None else emit_error) is not None
                lists[failed].append(future)
            if row.event is not None:
                row.event.set()
        for loop, (ready, failed_futures) in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_resolve, ready, failed_futures, error or emit_error)


def _execute_bulk(
    conn: sqlite3.Connection, groups: dict[BulkInsert, list[Sequence[object]]]
) -> None:
    """Write each statement's rows, up to `_MAX_BULK_ROWS` per statement, in order."""
    for stmt, rows in groups.items():
        i, n = 0, len(rows)
        while i < n:
            size = 1 << (min(n - i, _MAX_BULK_ROWS).bit_length() - 1)  # a power of two
            conn.execute(stmt.sql(size), [v for params in rows[i : i + size] for v in params])
            i += size


def _execute_plain(conn: sqlite3.Connection, rows: list[tuple[str, Sequence[object]]]) -> None:
    """Run plain statements in order; consecutive equal ones through one `executemany`."""
    i = 0
    while i < len(rows):
        sql = rows[i][0]
        j = i + 1
        while j < len(rows) and rows[j][0] == sql:
            j += 1
        if j - i == 1:
            conn.execute(sql, rows[i][1])
        else:
            conn.executemany(sql, [params for _, params in rows[i:j]])
        i = j


def _resolve(
    ready: list[asyncio.Future[None]],
    failed: list[asyncio.Future[None]],
    error: JournalError | None,
) -> None:
    # A future already done was cancelled by its caller; its row is committed regardless.
    for future in ready:
        if not future.done():
            future.set_result(None)
    for future in failed:
        if not future.done():
            assert error is not None
            future.set_exception(error)
