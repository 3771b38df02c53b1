"""The journal: one SQLite file (WAL) holding runs, teacher calls and item progress.

`Journal.open` takes the writer lock, migrates the schema and starts the writer thread;
`Journal.start_run` creates or resumes a run and returns its `RunJournal`, through which
the pipeline records everything. Reads use their own connections (WAL readers never block
the writer), on a small thread pool when called from the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from amr_async.journal._cost import CostTotals
from amr_async.journal._errors import JournalClosedError, JournalError
from amr_async.journal._lock import WriterLock
from amr_async.journal._output import OutputSink, scan_ids, storage_error
from amr_async.journal._schema import CALLS_BY_KEY, migrate
from amr_async.journal._writer import (
    BulkInsert,
    Emit,
    GroupCommitWriter,
    open_connection,
    sqlite_storage_error,
)
from amr_async.teacher.types import Outcome, OutcomeKind, Usage

_CALL_COLUMNS = (
    "kind, text, finish_reason, input_tokens, output_tokens, cached_input_tokens, "
    "cache_creation_tokens, cost_usd, request_id, run_id, source, provider, model"
)
# The hot statements: many rows per statement (see `BulkInsert`), each on its own table.
_INSERT_CALL = BulkInsert(
    "INSERT INTO calls (run_id, key, item_id, stage, provider, model, kind, text, "
    "finish_reason, input_tokens, output_tokens, cached_input_tokens, cache_creation_tokens, "
    "cost_usd, request_id, latency_s, source, created_at) VALUES",
    18,
)
# `emitted` comes last: for a row carrying its output line the writer sets it (`Emit`).
_UPSERT_ITEM = BulkInsert(
    "INSERT INTO items (run_id, item_id, line_no, state, stage, verdict, reason, record, "
    "updated_at, emitted) VALUES",
    10,
    " ON CONFLICT (run_id, item_id) DO UPDATE SET state = excluded.state, "
    "stage = coalesce(excluded.stage, items.stage), verdict = excluded.verdict, "
    "reason = excluded.reason, record = excluded.record, emitted = excluded.emitted, "
    "updated_at = excluded.updated_at",
)
_INSERT_STAGE = BulkInsert(
    "INSERT OR REPLACE INTO item_stages (run_id, item_id, stage, output, provenance, "
    "created_at) VALUES",
    6,
)


@dataclass(slots=True, frozen=True)
class JournaledCall:
    """A teacher answer as journaled."""

    kind: OutcomeKind
    text: str
    finish_reason: str | None
    usage: Usage
    cost_usd: float
    request_id: str | None
    run_id: str
    source: str
    provider: str
    model: str

    def to_outcome(self) -> Outcome:
        """The `Outcome` a caller gets when answered from the journal."""
        return Outcome(
            kind=self.kind,
            text=self.text,
            finish_reason=self.finish_reason,
            usage=self.usage,
            request_id=self.request_id,
        )


@dataclass(slots=True, frozen=True)
class ItemState:
    """What the journal knows of one item: where resume picks it up."""

    item_id: str
    line_no: int
    state: str  # active | done | failed | dropped (done, kept out of the output)
    stage: str | None  # last completed stage
    verdict: str | None
    reason: str | None
    outputs: dict[str, Any] = field(default_factory=dict)  # stage -> output


@dataclass(slots=True, frozen=True)
class RunInfo:
    """One run's record."""

    run_id: str
    config: dict[str, Any]
    status: str
    created_at: float
    started_at: float | None
    stopped_at: float | None
    attempts: int
    message: str | None
    output_path: str | None
    output_offset: int


class Journal:
    """A journal file open for writing by this process (one writer process at a time).

    Safe to share between the tasks of one event loop and between threads; `close()`
    commits what is queued and releases the lock.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int = 2000,
        max_delay_s: float = 0.01,
        synchronous: str = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self._lock = WriterLock(self.path)
        self._sinks: dict[str, OutputSink] = {}
        self._writer = GroupCommitWriter(
            self.path,
            max_rows=max_rows,
            max_delay_s=max_delay_s,
            synchronous=synchronous,
            sink_for=self._sinks.get,
        )
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="amr-journal-read")
        self._open = False

    @classmethod
    def open(cls, path: Path | str, **options: Any) -> Journal:
        """Open (creating if needed) the journal at `path` for writing.

        Args:
            path: the SQLite file.
            **options: `max_rows`, `max_delay_s`, `synchronous` of the group-commit writer.

        Returns:
            The open journal.

        Raises:
            JournalLockedError: another process has it open for writing.
            JournalSchemaError: the file is not a usable journal.
            JournalStorageError: it cannot be created (e.g. the disk is full).
        """
        journal = cls(Path(path), **options)
        journal._lock.acquire()
        try:
            conn = open_connection(journal.path)
            try:
                migrate(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            journal._lock.release()
            raise sqlite_storage_error(exc, f"journal {journal.path}") from None
        except BaseException:
            journal._lock.release()
            raise
        journal._writer.start()
        journal._open = True
        return journal

    def close(self) -> None:
        """Commit what is queued, stop the writer, close readers, release the lock."""
        if not self._open:
            return
        self._open = False
        self._writer.close()
        self._pool.shutdown(wait=True)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        for sink in self._sinks.values():
            sink.close()
        self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def writer(self) -> GroupCommitWriter:
        return self._writer

    @property
    def error(self) -> JournalError | None:
        """The storage error that stopped writing, if any."""
        return self._writer.error

    # --------------------------------------------------------------- reading

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use)."""
        if not self._open:
            raise JournalClosedError("the journal is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30.0
            )
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def read(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the read pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        rows = self.reader().execute(
            "SELECT run_id, config, status, created_at, started_at, stopped_at, attempts, "
            "message, output_path, output_offset FROM runs ORDER BY created_at"
        )
        return [_run_info(row) for row in rows]

    def run_info(self, run_id: str) -> RunInfo | None:
        row = (
            self.reader()
            .execute(
                "SELECT run_id, config, status, created_at, started_at, stopped_at, attempts, "
                "message, output_path, output_offset FROM runs WHERE run_id = ?",
                (run_id,),
            )
            .fetchone()
        )
        return None if row is None else _run_info(row)

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        *,
        config: Mapping[str, Any],
        output_path: Path | None = None,
        run_id: str | None = None,
        resume: bool = False,
        cache: bool = False,
    ) -> RunJournal:
        """Create a run, or resume one, and make its output file consistent.

        Args:
            config: the run's configuration, JSON-ready and free of secrets.
            output_path: the output JSONL (None: the run writes no output file).
            run_id: the run to create or resume; a new uuid when None and not resuming,
                the latest run when None and resuming.
            resume: continue an existing run.
            cache: answer calls from other runs' journaled answers too (same key).

        Returns:
            The run's journal handle.

        Raises:
            JournalError: no run to resume, the run id exists when not resuming, or
                the output cannot be repaired.
        """
        now = time.time()
        if resume:
            if run_id is None:
                runs = self.runs()
                if not runs:
                    raise JournalError(f"nothing to resume: journal {self.path} holds no run")
                run_id = runs[-1].run_id
            info = self.run_info(run_id)
            if info is None:
                raise JournalError(f"no run {run_id!r} in journal {self.path} to resume")
        else:
            run_id = run_id or uuid.uuid4().hex
            if self.run_info(run_id) is not None:
                raise JournalError(f"run {run_id!r} already exists in {self.path}; use --resume")
        config_json = orjson.dumps(dict(config), option=orjson.OPT_SORT_KEYS).decode()
        self._writer.submit(
            "INSERT INTO runs (run_id, config, created_at, status, output_path) "
            "VALUES (?, ?, ?, 'running', ?) ON CONFLICT (run_id) DO NOTHING",
            (run_id, config_json, now, None if output_path is None else str(output_path)),
        )
        self._writer.submit(
            "UPDATE runs SET started_at = ?, stopped_at = NULL, status = 'running', "
            "message = NULL, attempts = attempts + 1, config = ? WHERE run_id = ?",
            (now, config_json, run_id),
        )
        self._writer.flush_sync()
        run = RunJournal(self, run_id, cache=cache)
        if output_path is not None:
            run.attach_output(Path(output_path))
        return run


class RunJournal:
    """What one run records: calls, item stages and results, cost, its end.

    Shared by all tasks of the run on one event loop.
    """

    def __init__(self, journal: Journal, run_id: str, *, cache: bool) -> None:
        self.journal = journal
        self.run_id = run_id
        self.cache = cache
        self._writer = journal.writer
        reader = journal.reader()
        row = reader.execute(
            "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cost_usd), 0) FROM calls WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        self.totals = CostTotals(int(row[0]), int(row[1]), int(row[2]), float(row[3]))
        self.calls_answered_from_journal = 0
        # A fresh run without the cache cannot hit: skip the read entirely, and leave the
        # key index unbuilt (see schema v3); a run that can hit builds it now.
        has_any = reader.execute("SELECT 1 FROM calls LIMIT 1").fetchone() is not None
        self._lookups = self.totals.calls > 0 or (cache and has_any)
        if self._lookups:
            self._writer.submit(CALLS_BY_KEY)
            self._writer.flush_sync()

    # ----------------------------------------------------------------- output

    def attach_output(self, path: Path) -> None:
        """Repair `path` against the journal (see `_output`) and queue unemitted lines."""
        conn = self.journal.reader()
        offset, old_path = conn.execute(
            "SELECT output_offset, output_path FROM runs WHERE run_id = ?", (self.run_id,)
        ).fetchone()
        size = path.stat().st_size if path.exists() else 0
        if old_path is not None and Path(old_path) != path:
            # A new output file for this run: write every finished item into it afresh.
            self._writer.submit(
                "UPDATE items SET emitted = 0 WHERE run_id = ? AND state = 'done'", (self.run_id,)
            )
            self._writer.flush_sync()
            offset = 0
        try:
            if size >= offset:
                if size > offset:
                    with path.open("r+b") as f:
                        f.truncate(offset)
            else:
                offset = self._rescan(path)
        except OSError as exc:
            raise storage_error(exc, f"output {path}") from None
        # Flush first: no line of an earlier sink for this run may still be on its way.
        self._writer.flush_sync()
        old = self.journal._sinks.pop(self.run_id, None)
        if old is not None:
            old.close()
        self.journal._sinks[self.run_id] = OutputSink(path, offset)
        self._writer.submit(
            "UPDATE runs SET output_path = ?, output_offset = ? WHERE run_id = ?",
            (str(path), offset, self.run_id),
        )
        pending = conn.execute(
            "SELECT item_id, record FROM items WHERE run_id = ? AND state = 'done' "
            "AND emitted = 0 ORDER BY line_no",
            (self.run_id,),
        ).fetchall()
        for item_id, record in pending:
            self._writer.submit(None, (), Emit(self.run_id, item_id, bytes(record)))
        self._writer.flush_sync()

    def _rescan(self, path: Path) -> int:
        """The file lost its tail: trust only its whole lines, re-emit everything else."""
        end, ids = scan_ids(path)
        with path.open("r+b") as f:
            f.truncate(end)
        self._writer.submit(
            "UPDATE items SET emitted = 0 WHERE run_id = ? AND state = 'done'", (self.run_id,)
        )
        for item_id in ids:
            self._writer.submit(
                "UPDATE items SET emitted = 1 WHERE run_id = ? AND item_id = ?",
                (self.run_id, item_id),
            )
        self._writer.flush_sync()
        return end

    # ------------------------------------------------------------------ calls

    @property
    def may_hit(self) -> bool:
        """Whether `lookup_call` can find anything (False for a fresh run without cache)."""
        return self._lookups

    async def lookup_call(self, key: bytes) -> JournaledCall | None:
        """The journaled answer for `key` in this run (or, with the cache, any run)."""
        if not self._lookups:
            return None
        found: JournaledCall | None = await self.journal.read(self._lookup_sync, key)
        if found is None:
            return None
        self.calls_answered_from_journal += 1
        if found.run_id != self.run_id:
            # A cross-run cache hit becomes this run's call at no cost, so that resuming
            # this run answers it again without depending on the other run.
            await self._writer.submit_async(
                _INSERT_CALL,
                (
                    self.run_id, key, None, None, found.provider, found.model, str(found.kind),
                    found.text, found.finish_reason, found.usage.input_tokens,
                    found.usage.output_tokens, found.usage.cached_input_tokens,
                    found.usage.cache_creation_tokens, 0.0, found.request_id, 0.0, "cache",
                    time.time(),
                ),
            )  # fmt: skip
        return found

    def _lookup_sync(self, key: bytes) -> JournaledCall | None:
        conn = self.journal.reader()
        row = conn.execute(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE key = ? AND run_id = ? LIMIT 1",
            (key, self.run_id),
        ).fetchone()
        if row is None and self.cache:
            row = conn.execute(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE key = ? AND source = 'wire' LIMIT 1",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return JournaledCall(
            kind=OutcomeKind(row[0]),
            text=row[1],
            finish_reason=row[2],
            usage=Usage(row[3], row[4], row[5], row[6]),
            cost_usd=row[7],
            request_id=row[8],
            run_id=row[9],
            source=row[10],
            provider=row[11],
            model=row[12],
        )

    def record_call(
        self,
        key: bytes,
        outcome: Outcome,
        *,
        provider: str,
        model: str,
        cost_usd: float,
        item_id: str | None = None,
        stage: str | None = None,
    ) -> asyncio.Future[None]:
        """Journal a paid answer durably. Await the result before using the answer.

        A plain function returning the commit's future rather than a coroutine: it runs
        once per teacher call, and a coroutine per call is measurable at zero latency.

        Returns:
            A future resolved once the answer is committed; it fails with
            `JournalStorageError` if the commit failed (the caller must then not use the
            answer as if it were journaled).

        Raises:
            ValueError: `outcome` is not a paid answer (ok or truncated).
        """
        if not outcome.kind.is_success:
            raise ValueError(f"only paid answers are journaled, not {outcome.kind}")
        usage = outcome.usage
        self.totals.add(usage.input_tokens, usage.output_tokens, cost_usd)
        return self._writer.submit_async(
            _INSERT_CALL,
            (
                self.run_id, key, item_id, stage, provider, model, str(outcome.kind),
                outcome.text, outcome.finish_reason, usage.input_tokens, usage.output_tokens,
                usage.cached_input_tokens, usage.cache_creation_tokens, cost_usd,
                outcome.request_id, outcome.latency_s, "wire", time.time(),
            ),
        )  # fmt: skip

    def cost_by_stage(self) -> dict[str, CostTotals]:
        """Tokens and dollars per stage of this run (calls without a stage under "")."""
        rows = self.journal.reader().execute(
            "SELECT coalesce(stage, ''), count(*), sum(input_tokens), sum(output_tokens), "
            "sum(cost_usd) FROM calls WHERE run_id = ? GROUP BY 1 ORDER BY 1",
            (self.run_id,),
        )
        return {r[0]: CostTotals(r[1], r[2], r[3], r[4]) for r in rows}

    # ------------------------------------------------------------------ items

    def load_items(self, item_ids: Iterable[str]) -> dict[str, ItemState]:
        """The journaled state of the given items (absent ones are omitted).

        Synchronous: call it off the event loop (e.g. via `Journal.read`).
        """
        ids = list(item_ids)
        conn = self.journal.reader()
        states: dict[str, ItemState] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT item_id, line_no, state, stage, verdict, reason FROM items "
                f"WHERE run_id = ? AND item_id IN ({marks})",
                (self.run_id, *chunk),
            ).fetchall()
            active = [r[0] for r in rows if r[2] not in ("done", "dropped")]
            outputs: dict[str, dict[str, Any]] = {}
            if active:
                marks = ",".join("?" * len(active))
                for item_id, stage, output in conn.execute(
                    "SELECT item_id, stage, output FROM item_stages "
                    f"WHERE run_id = ? AND item_id IN ({marks})",
                    (self.run_id, *active),
                ):
                    outputs.setdefault(item_id, {})[stage] = orjson.loads(output)
            for item_id, line_no, state, stage, verdict, reason in rows:
                states[item_id] = ItemState(
                    item_id, line_no, state, stage, verdict, reason, outputs.get(item_id, {})
                )
        return states

    def load_records(self, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The final records of the given items that are done (others are omitted).

        Synchronous: call it off the event loop (e.g. via `Journal.read`).
        """
        ids = list(item_ids)
        conn = self.journal.reader()
        records: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for item_id, record in conn.execute(
                "SELECT item_id, record FROM items "
                f"WHERE run_id = ? AND state IN ('done', 'dropped') AND item_id IN ({marks})",
                (self.run_id, *chunk),
            ):
                records[item_id] = orjson.loads(record)
        return records

    def record_stage(
        self,
        item_id: str,
        line_no: int,
        stage: str,
        output: Any,
        provenance: Mapping[str, Any],
    ) -> None:
        """Journal a completed stage of an item (committed with the writer's next batch).

        Not awaited: the stage's teacher calls are already durable, and the item's final
        commit is ordered after this row, so a crash before it only repeats local work.
        """
        now = time.time()
        self._writer.submit(
            _INSERT_STAGE,
            (
                self.run_id, item_id, stage, orjson.dumps(output).decode(),
                orjson.dumps(dict(provenance)).decode(), now,
            ),
        )  # fmt: skip
        self._writer.submit(
            _UPSERT_ITEM,
            (self.run_id, item_id, line_no, "active", stage, None, None, None, now, 0),
        )

    def finish_item(
        self,
        item_id: str,
        line_no: int,
        record: Mapping[str, Any],
        *,
        stage: str | None = None,
        verdict: str | None = None,
    ) -> asyncio.Future[None]:
        """Journal an item's final record; its output line follows (exactly once).

        Args:
            item_id: the item; `record["id"]` must equal it.
            line_no: its input line.
            record: the output record (one JSON object).
            stage: the last stage it completed.
            verdict: e.g. "ok", "truncated".

        Returns:
            A future resolved once the record is committed (failed on a storage error).
            The caller may go on without awaiting it; the teacher answers it was made from
            are already durable, so a crash before it commits only repeats local work.
        """
        if record.get("id") != item_id:
            raise ValueError("the output record's 'id' must be the item id")
        line = orjson.dumps(record if type(record) is dict else dict(record))
        return self._writer.submit_async(
            _UPSERT_ITEM,
            (self.run_id, item_id, line_no, "done", stage, verdict, None, line, time.time(), 1),
            Emit(self.run_id, item_id, line),
        )

    def drop_item(
        self, item_id: str, line_no: int, record: Mapping[str, Any], *, reason: str,
        stage: str | None = None,
    ) -> asyncio.Future[None]:  # fmt: skip
        """Journal a finished item whose record stays out of the output (state `dropped`).

        The record is kept (`load_records` returns it, e.g. for a window's merge on
        resume); no output line is written for it, now or on resume.

        Returns:
            A future resolved once committed (failed on a storage error).
        """
        if record.get("id") != item_id:
            raise ValueError("the record's 'id' must be the item id")
        line = orjson.dumps(dict(record))
        return self._writer.submit_async(
            _UPSERT_ITEM,
            (
                self.run_id,
                item_id,
                line_no,
                "dropped",
                stage,
                "dropped",
                reason,
                line,
                time.time(),
                0,
            ),
        )

    async def fail_item(
        self, item_id: str, line_no: int, reason: str, *, stage: str | None = None
    ) -> None:
        """Journal that an item could not be finished and why (a resume tries it again)."""
        await self._writer.submit_async(
            _UPSERT_ITEM,
            (
                self.run_id,
                item_id,
                line_no,
                "failed",
                stage,
                "failed",
                reason,
                None,
                time.time(),
                0,
            ),
        )

    # -------------------------------------------------------------------- end

    async def stop(self, status: str, message: str | None = None) -> None:
        """Record the run's end (status and a one-line message) durably."""
        await self._writer.submit_async(
            "UPDATE runs SET stopped_at = ?, status = ?, message = ? WHERE run_id = ?",
            (time.time(), status, message, self.run_id),
        )

    def item_counts(self) -> dict[str, int]:
        """Items per state in this run."""
        rows = self.journal.reader().execute(
            "SELECT state, count(*) FROM items WHERE run_id = ? GROUP BY state", (self.run_id,)
        )
        return {state: int(n) for state, n in rows}


def _run_info(row: Sequence[Any]) -> RunInfo:
    return RunInfo(
        run_id=row[0],
        config=orjson.loads(row[1]),
        status=row[2],
        created_at=row[3],
        started_at=row[4],
        stopped_at=row[5],
        attempts=row[6],
        message=row[7],
        output_path=row[8],
        output_offset=row[9],
    )
