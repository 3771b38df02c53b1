"""The journal's single writer thread with group commit.

Every write goes through one queue to one thread that owns the only writing connection.
The thread takes the first waiting row, then every row queued behind it (up to
`max_rows`), and commits them in one transaction: one fsync pays for the whole group.

A batch closes at `max_rows`, or `max_delay_s` (10 ms by default) after its first row,
or at once for a `flush()`. The window trades a few milliseconds of latency per journaled
answer (teacher calls take seconds) for fewer, larger commits: on the development machine
it cut the journal's CPU per item by roughly a sixth against committing whenever the queue
was momentarily empty, since every commit costs page writes and an fsync whatever its size.

Rows may carry an output line (`emit`): once their transaction is committed the lines
are appended to the output file, and the new offset is committed with the next
transaction (or when the queue goes idle), see `_output`.

After a storage error the writer fails every later row at once with the same error, so no
awaiting caller hangs and nothing is written past the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
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


@dataclass(slots=True)
class Emit:
    """An output line to append once its row is committed."""

    run_id: str
    item_id: str
    line: bytes


@dataclass(slots=True)
class _Row:
    sql: str | None
    params: Sequence[object]
    emit: Emit | None
    future: asyncio.Future[None] | None
    event: threading.Event | None = None


_STOP = object()


def open_connection(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection in autocommit mode with the journal's pragmas (WAL, busy timeout).

    Args:
        path: the journal file.
        synchronous: `FULL` (default) makes each commit durable against power loss;
            `NORMAL` only against process crashes (WAL).

    Returns:
        The connection; the caller closes it.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
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
        synchronous: str = "FULL",
        sink_for: Callable[[str], OutputSink | None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._path = path
        self._max_rows = max_rows
        self._max_delay_s = max_delay_s
        self._synchronous = synchronous
        self._sink_for = sink_for or (lambda run_id: None)
        self._queue: queue.SimpleQueue[_Row | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="amr-journal-writer", daemon=True)
        self._closed = False
        self.error: JournalError | None = None
        # Output lines appended but whose offset is not yet committed: run -> (items, offset).
        self._pending_offsets: dict[str, tuple[list[str], int]] = {}
        self.rows_committed = 0
        self.batches = 0

    def start(self) -> None:
        self._thread.start()

    # -------------------------------------------------------------- producers

    def submit(
        self, sql: str | None, params: Sequence[object] = (), emit: Emit | None = None
    ) -> None:
        """Queue a row without waiting; it is committed with the next batch."""
        self._check_open()
        self._queue.put(_Row(sql, params, emit, None))

    def submit_async(
        self, sql: str | None, params: Sequence[object] = (), emit: Emit | None = None
    ) -> asyncio.Future[None]:
        """Queue a row; the future resolves once it is committed (or fails with the error)."""
        self._check_open()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            future.set_exception(self.error)
            return future
        self._queue.put(_Row(sql, params, emit, future))
        return future

    async def flush(self) -> None:
        """Wait until every row queued before this call is committed."""
        await self.submit_async(None)

    def flush_sync(self) -> None:
        """Block until every row queued before this call is committed; raise a stored error."""
        self._check_open()
        event = threading.Event()
        self._queue.put(_Row(None, (), None, None, event))
        event.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Commit what is queued, stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _check_open(self) -> None:
        if self._closed:
            raise JournalClosedError("the journal is closed")

    # ------------------------------------------------------------ the thread

    def _main(self) -> None:
        conn = open_connection(self._path, synchronous=self._synchronous)
        try:
            stop = False
            while not stop:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    # Idle: commit the output offsets still pending before sleeping.
                    self._commit_offsets(conn)
                    first = self._queue.get()
                if first is _STOP:
                    break
                assert isinstance(first, _Row)
                batch = [first]
                stop = self._gather(batch)
                self._commit(conn, batch)
            self._commit_offsets(conn)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _gather(self, batch: list[_Row]) -> bool:
        """Add queued rows to `batch` until it is full or its window is over.

        Returns:
            True when the stop marker was taken (the batch is then committed last).
        """
        deadline = time.monotonic() + self._max_delay_s
        while len(batch) < self._max_rows:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                wait = deadline - time.monotonic()
                if wait <= 0 or batch[-1].event is not None:
                    return False  # window over, or a flush() is waiting: commit now
                try:
                    row = self._queue.get(timeout=wait)
                except queue.Empty:
                    return False
            if row is _STOP:
                return True
            assert isinstance(row, _Row)
            batch.append(row)
        return False

    def _commit(self, conn: sqlite3.Connection, batch: list[_Row]) -> None:
        error = self.error
        if error is None:
            try:
                self._write(conn, batch)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                error = self.error = sqlite_storage_error(exc, f"journal {self._path}")
        # Callers waiting for durability go on now; output lines follow.
        self._settle(batch, error)
        if error is None:
            try:
                self._emit(batch)
            except JournalStorageError as exc:
                self.error = exc
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self.error = sqlite_storage_error(exc, f"journal {self._path}")

    def _write(self, conn: sqlite3.Connection, batch: list[_Row]) -> None:
        rows = [r for r in batch if r.sql is not None]
        if not rows:
            return
        conn.execute("BEGIN IMMEDIATE")
        self._apply_offsets(conn)
        # Consecutive rows with the same statement go through one executemany.
        i = 0
        while i < len(rows):
            sql = rows[i].sql
            j = i + 1
            while j < len(rows) and rows[j].sql == sql:
                j += 1
            assert sql is not None
            if j - i == 1:
                conn.execute(sql, rows[i].params)
            else:
                conn.executemany(sql, [r.params for r in rows[i:j]])
            i = j
        conn.execute("COMMIT")
        self._pending_offsets.clear()
        self.rows_committed += len(rows)
        self.batches += 1

    def _emit(self, batch: list[_Row]) -> None:
        """Append the batch's output lines; their offsets commit with the next transaction.

        Deferring the offset costs nothing in safety: until it commits, resume sees a file
        longer than the offset, cuts it back and appends those lines again.
        """
        by_run: dict[str, list[Emit]] = {}
        for row in batch:
            if row.emit is not None:
                by_run.setdefault(row.emit.run_id, []).append(row.emit)
        for run_id, emits in by_run.items():
            sink = self._sink_for(run_id)  # owned (and closed) by the journal
            if sink is None:
                continue
            offset = sink.append([e.line for e in emits])
            pending = self._pending_offsets.setdefault(run_id, ([], 0))
            self._pending_offsets[run_id] = (pending[0] + [e.item_id for e in emits], offset)

    def _apply_offsets(self, conn: sqlite3.Connection) -> None:
        for run_id, (item_ids, offset) in self._pending_offsets.items():
            conn.executemany(
                "UPDATE items SET emitted = 1 WHERE run_id = ? AND item_id = ?",
                [(run_id, item_id) for item_id in item_ids],
            )
            conn.execute("UPDATE runs SET output_offset = ? WHERE run_id = ?", (offset, run_id))

    def _commit_offsets(self, conn: sqlite3.Connection) -> None:
        if not self._pending_offsets or self.error is not None:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._apply_offsets(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self.error = sqlite_storage_error(exc, f"journal {self._path}")
            return
        self._pending_offsets.clear()

    @staticmethod
    def _settle(batch: list[_Row], error: JournalError | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for row in batch:
            if row.future is not None:
                by_loop.setdefault(row.future.get_loop(), []).append(row.future)
            if row.event is not None:
                row.event.set()
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_resolve, futures, error)


def _resolve(futures: list[asyncio.Future[None]], error: JournalError | None) -> None:
    for future in futures:
        if future.done():  # cancelled by its caller; the row is committed regardless
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
