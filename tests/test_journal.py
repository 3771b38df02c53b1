"""The journal store: keys, schema, group commit, calls, items, output exact-once, lock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from amr_async.journal import (
    SCHEMA_VERSION,
    Budget,
    CostTotals,
    Journal,
    JournalError,
    JournalLockedError,
    JournalSchemaError,
    request_key,
)
from amr_async.journal._schema import migrate
from amr_async.teacher.types import ChatRequest, Message, Outcome, OutcomeKind, Usage


def _req(text: str = "q", **kw: object) -> ChatRequest:
    return ChatRequest(model="m", messages=(Message("user", text),), max_tokens=100, **kw)  # type: ignore[arg-type]


def _ok(text: str = "answer", tokens: tuple[int, int] = (10, 20)) -> Outcome:
    return Outcome(OutcomeKind.OK, text=text, finish_reason="stop", usage=Usage(*tokens))


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


# ----------------------------------------------------------------------------- keys


def test_key_is_stable_and_ignores_representation() -> None:
    assert request_key("openai", _req(temperature=0)) == request_key(
        "openai", _req(temperature=0.0)
    )
    assert len(request_key("openai", _req())) == 32


@pytest.mark.parametrize(
    "other",
    [
        _req("q2"),
        _req(sample_index=1),
        _req(temperature=0.7),
        _req(seed=3),
        _req(system="s"),
        _req(stop=("x",)),
        ChatRequest(model="m2", messages=(Message("user", "q"),), max_tokens=100),
        ChatRequest(model="m", messages=(Message("user", "q"),), max_tokens=101),
        ChatRequest(model="m", messages=(Message("assistant", "q"),), max_tokens=100),
    ],
)
def test_key_differs_when_the_request_does(other: ChatRequest) -> None:
    assert request_key("openai", _req()) != request_key("openai", other)


def test_key_depends_on_provider() -> None:
    assert request_key("openai", _req()) != request_key("anthropic", _req())


def test_key_bytes_are_pinned() -> None:
    # Journals on disk hold these keys: a resumed or cached run finds its answers only if
    # the same request still hashes to the same bytes. Any change here needs a new
    # `_KEY_VERSION` (and re-buys every journaled answer).
    text = "Write f(x) \u2014 \u201cquoted\u201d \u2713"  # non-ASCII is hashed as UTF-8
    plain = ChatRequest(model="gpt-4o-mini", messages=(Message("user", text),), max_tokens=100)
    full = ChatRequest(
        model="claude",
        messages=(Message("user", "a"), Message("assistant", "b"), Message("user", "c")),
        max_tokens=5, system="sys", temperature=0.7, seed=3, stop=("```", "END"), sample_index=2,
    )  # fmt: skip
    assert request_key("openai", plain).hex() == (
        "d3a71d2b3d0d0728daf1b68fdaf7ded6dbe934937b82a45a4ea747b433a1bc22"
    )
    assert request_key("anthropic", plain).hex() == (
        "d9067c5bb821223ec233b36d148d9b57a6064991ec6ba731fa100f8f768db99b"
    )
    assert request_key("openai", full).hex() == (
        "ea49a18846ca6ad4ef54ff39dc111fce6ecf1c9910518068bc548c31261adba6"
    )
    assert request_key("anthropic", full).hex() == (
        "3ed884521f3c27ce9d352bcfc0b78ee3f295c7aee0bd56e6b765787772a3d14f"
    )


# --------------------------------------------------------------------------- schema


def test_new_journal_has_current_schema_and_wal(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db"):
        pass
    conn = _raw(tmp_path / "j.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_old_journal_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute(
        "INSERT INTO runs (run_id, config, created_at, status) VALUES ('r1', '{}', 0, 'finished')"
    )
    conn.close()
    with Journal.open(path) as journal:
        assert [r.run_id for r in journal.runs()] == ["r1"]
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "items_unemitted" in names
    assert "calls_by_key" not in names  # v3: built on demand (see the next test)


def _indexes(path: Path) -> set[str]:
    conn = _raw(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


async def test_key_index_is_built_only_when_a_run_can_hit(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    key = request_key("openai", _req())
    with Journal.open(path) as journal:
        run = journal.start_run(config={}, run_id="r1")
        await run.record_call(key, _ok("A"), provider="openai", model="m", cost_usd=1.0)
        # A fresh run never looks a key up: its writes keep no index of random keys.
        assert "calls_by_key" not in _indexes(path)
    with Journal.open(path) as journal:
        resumed = journal.start_run(config={}, run_id="r1", resume=True)
        assert "calls_by_key" in _indexes(path)
        plan = " ".join(
            str(r[-1])
            for r in _raw(path).execute(
                "EXPLAIN QUERY PLAN SELECT text FROM calls WHERE key = ? AND run_id = ? LIMIT 1",
                (key, "r1"),
            )
        )
        assert "calls_by_key" in plan
        hit = await resumed.lookup_call(key)
        assert hit is not None
        assert hit.text == "A"


async def test_identical_requests_in_flight_are_both_journaled(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "j.db"
    key = request_key("openai", _req())
    with Journal.open(path) as journal:
        run = journal.start_run(config={}, run_id="r1")
        # Two items asked the same thing at once: both answers were paid for.
        await asyncio.gather(
            run.record_call(key, _ok("A"), provider="openai", model="m", cost_usd=1.0),
            run.record_call(key, _ok("B"), provider="openai", model="m", cost_usd=1.0),
        )
        assert run.totals.cost_usd == 2.0
    with Journal.open(path) as journal:
        resumed = journal.start_run(config={}, run_id="r1", resume=True)
        assert resumed.totals == CostTotals(2, 20, 40, 2.0)
        hit = await resumed.lookup_call(key)
        assert hit is not None
        assert hit.text in ("A", "B")


def test_newer_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path):
        pass
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalSchemaError, match="newer than this amr-async"):
        Journal.open(path)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(JournalSchemaError, match="not an amr-async journal"):
        Journal.open(path)


# ---------------------------------------------------------------------------- calls


async def test_answer_is_committed_before_record_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        run = journal.start_run(config={})
        key = request_key("openai", _req())
        await run.record_call(key, _ok(), provider="openai", model="m", cost_usd=0.5, stage="s")
        # An independent connection sees it while the journal is still open.
        row = _raw(path).execute("SELECT text, cost_usd, stage FROM calls").fetchone()
        assert row == ("answer", 0.5, "s")


async def test_group_commit_batches_concurrent_writers(tmp_path: Path) -> None:
    import asyncio

    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={})
        batches_before = journal.writer.batches
        outcome = _ok()
        await asyncio.gather(
            *(
                run.record_call(
                    request_key("openai", _req(f"q{i}")),
                    outcome,
                    provider="openai",
                    model="m",
                    cost_usd=0.0,
                )
                for i in range(500)
            )
        )
        batches = journal.writer.batches - batches_before
        assert 1 <= batches < 500  # many rows share a commit
        assert _raw(journal.path).execute("SELECT count(*) FROM calls").fetchone()[0] == 500


async def test_a_bulk_row_of_the_wrong_width_is_refused_at_submit(tmp_path: Path) -> None:
    from amr_async.journal._store import _UPSERT_ITEM

    with Journal.open(tmp_path / "j.db") as journal:
        with pytest.raises(ValueError, match="INSERT INTO items: 9 values, expected 10"):
            journal.writer.submit_async(
                _UPSERT_ITEM, ("r", "i", 1, "done", None, "ok", None, "{}", 0.0)
            )
        await journal.writer.flush()  # the writer is unharmed
        assert journal.writer.error is None


async def test_batch_waits_out_its_window_unless_flushed(tmp_path: Path) -> None:
    import asyncio

    # A window far longer than the test: rows commit only because flush() closes it,
    # all in one transaction (the thread is woken per batch, not per row).
    with Journal.open(tmp_path / "j.db", max_delay_s=600.0) as journal:
        run = journal.start_run(config={})
        before = journal.writer.batches
        waiters = [
            asyncio.ensure_future(
                run.record_call(
                    request_key("openai", _req(f"q{i}")), _ok(), provider="openai", model="m",
                    cost_usd=0.0,
                )
            )
            for i in range(300)
        ]  # fmt: skip
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        await journal.writer.flush()
        await asyncio.gather(*waiters)
        assert journal.writer.batches - before == 1
        # 300 rows went out as multi-row statements (256 + 32 + 8 + 4) in that one commit.
        assert _raw(journal.path).execute("SELECT count(*) FROM calls").fetchone()[0] == 300


@pytest.mark.parametrize(
    ("rows", "sizes"), [(1, [1]), (37, [32, 4, 1]), (64, [64]), (300, [256, 32, 8, 4])]
)
def test_bulk_rows_go_in_few_statements_of_cached_sizes(
    tmp_path: Path, rows: int, sizes: list[int]
) -> None:
    from amr_async.journal._store import _INSERT_CALL
    from amr_async.journal._writer import _execute_bulk, open_connection

    with Journal.open(tmp_path / "j.db") as journal:
        journal.start_run(config={}, run_id="r")
    conn = open_connection(tmp_path / "j.db")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    params = [
        ("r", bytes([i % 256]) * 32, str(i), "s", "openai", "m", "ok", f"t{i}", "stop",
         1, 2, 0, 0, 0.0, None, 0.0, "wire", 0.0)
        for i in range(rows)
    ]  # fmt: skip
    conn.execute("BEGIN")
    _execute_bulk(conn, {_INSERT_CALL: params})
    conn.execute("COMMIT")
    # Powers of two: few statement sizes, all soon prepared (a new size costs a prepare).
    assert [s.count("), (") + 1 for s in statements if s.startswith("INSERT")] == sizes
    got = conn.execute("SELECT item_id, text FROM calls ORDER BY rowid").fetchall()
    assert got == [(str(i), f"t{i}") for i in range(rows)]
    conn.close()


async def test_full_batch_commits_without_waiting_for_its_window(tmp_path: Path) -> None:
    import asyncio

    with Journal.open(tmp_path / "j.db", max_rows=10, max_delay_s=600.0) as journal:
        run = journal.start_run(config={})
        before = journal.writer.batches
        # One full batch per round, each awaited before the next: were all 30 queued at
        # once, a writer thread that falls behind (under load) takes 10 and leaves a
        # partial rest, and a partial batch rightly waits out its window.
        for round_ in range(3):
            calls = [
                run.record_call(
                    request_key("openai", _req(f"q{round_}-{i}")), _ok(), provider="openai",
                    model="m", cost_usd=0.0,
                )
                for i in range(10)
            ]  # fmt: skip
            # would wait out the 600 s window if the batch's size did not close it
            await asyncio.wait_for(asyncio.gather(*calls), timeout=60)
        assert journal.writer.batches - before == 3


async def test_rows_of_one_item_keep_their_order_within_a_batch(tmp_path: Path) -> None:
    import asyncio

    with Journal.open(tmp_path / "j.db", max_delay_s=600.0) as journal:
        run = journal.start_run(config={}, run_id="r")
        for i in range(600):  # > one multi-row statement
            run.record_stage(f"i{i}", i, "direct", {"n": i}, {})
        done = [run.finish_item(f"i{i}", i, {"id": f"i{i}"}, stage="direct") for i in range(600)]
        await journal.writer.flush()
        await asyncio.gather(*done)
        assert run.item_counts() == {"done": 600}


async def test_output_write_failure_keeps_the_batch_and_reemits_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amr_async.journal import JournalDiskFullError
    from amr_async.journal._output import OutputSink

    path, out = tmp_path / "j.db", tmp_path / "out.jsonl"
    key = request_key("openai", _req())

    def full(self: OutputSink, lines: object) -> int:
        raise JournalDiskFullError("no space left writing output (test)")

    with Journal.open(path) as journal:
        run = journal.start_run(config={}, output_path=out, run_id="r")
        await run.finish_item("a", 1, {"id": "a"})
        monkeypatch.setattr(OutputSink, "append", full)
        call = run.record_call(key, _ok(), provider="openai", model="m", cost_usd=1.0)
        finished = run.finish_item("b", 2, {"id": "b"})
        await call  # the paid answer is committed despite the output failing
        with pytest.raises(JournalDiskFullError):
            await finished
        with pytest.raises(JournalDiskFullError):
            await run.finish_item("c", 3, {"id": "c"})  # nothing is written past the failure
        monkeypatch.undo()
    assert [r["id"] for r in _lines(out)] == ["a"]
    with Journal.open(path) as journal:
        run = journal.start_run(config={}, output_path=out, run_id="r", resume=True)
        assert run.totals.calls == 1
        assert run.item_counts() == {"done": 2}
    assert [r["id"] for r in _lines(out)] == ["a", "b"]


async def test_failures_are_not_journaled_as_answers(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={})
        with pytest.raises(ValueError, match="only paid answers"):
            await run.record_call(
                b"k" * 32, Outcome(OutcomeKind.AUTH), provider="openai", model="m", cost_usd=0
            )


async def test_resumed_run_answers_from_journal_fresh_run_does_not(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    key = request_key("openai", _req())
    with Journal.open(path) as journal:
        run = journal.start_run(config={}, run_id="r1")
        assert await run.lookup_call(key) is None
        await run.record_call(key, _ok("A"), provider="openai", model="m", cost_usd=1.0)
    with Journal.open(path) as journal:
        resumed = journal.start_run(config={}, run_id="r1", resume=True)
        hit = await resumed.lookup_call(key)
        assert hit is not None
        assert hit.to_outcome().text == "A"
        assert resumed.totals.cost_usd == 1.0  # earlier attempts count toward the budget
        other = journal.start_run(config={}, run_id="r2")
        assert await other.lookup_call(key) is None  # no cross-run cache by default
        cached = journal.start_run(config={}, run_id="r3", cache=True)
        hit = await cached.lookup_call(key)
        assert hit is not None
        assert hit.text == "A"
        assert cached.totals.cost_usd == 0.0
        assert journal.run_info("r1") is not None
        assert journal.run_info("r1").attempts == 2  # type: ignore[union-attr]


def test_start_run_refuses_existing_id_and_missing_resume(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        with pytest.raises(JournalError, match="nothing to resume"):
            journal.start_run(config={}, resume=True)
        journal.start_run(config={}, run_id="r1")
        with pytest.raises(JournalError, match="already exists"):
            journal.start_run(config={}, run_id="r1")


async def test_cost_by_stage_and_budget(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={})
        for i, stage in enumerate(["a", "a", "b"]):
            await run.record_call(
                request_key("openai", _req(f"q{i}")),
                _ok(tokens=(100, 50)),
                provider="openai",
                model="m",
                cost_usd=0.25,
                stage=stage,
            )
        by_stage = run.cost_by_stage()
        assert by_stage["a"] == CostTotals(2, 200, 100, 0.5)
        assert by_stage["b"] == CostTotals(1, 100, 50, 0.25)
        assert run.totals == CostTotals(3, 300, 150, 0.75)
    assert Budget(max_usd=1.0).exceeded(run.totals) is None
    assert "cap" in (Budget(max_usd=0.75).exceeded(run.totals) or "")
    assert "450 tokens" in (Budget(max_tokens=400).exceeded(run.totals) or "")


# ---------------------------------------------------------------------------- items


async def test_item_stages_resume_where_they_stopped(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        run = journal.start_run(config={}, run_id="r")
        run.record_stage("i1", 1, "direct", {"response": "x"}, {"src": "wire"})
        run.record_stage("i1", 1, "decompose", ["stub"], {})
        await run.fail_item("i2", 2, "teacher said no", stage=None)
        await run.finish_item("i3", 3, {"id": "i3", "r": 1}, stage="direct", verdict="ok")
    with Journal.open(path) as journal:
        run = journal.start_run(config={}, run_id="r", resume=True)
        states = run.load_items(["i1", "i2", "i3", "i4"])
        assert set(states) == {"i1", "i2", "i3"}
        assert states["i1"].stage == "decompose"
        assert states["i1"].outputs == {"direct": {"response": "x"}, "decompose": ["stub"]}
        assert (states["i2"].state, states["i2"].reason) == ("failed", "teacher said no")
        assert states["i3"].state == "done"
        assert run.item_counts() == {"active": 1, "done": 1, "failed": 1}


# --------------------------------------------------------------------------- output


def _lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


async def _finish(journal: Journal, run_id: str, ids: list[str], *, resume: bool) -> Path:
    out = journal.path.parent / "out.jsonl"
    run = journal.start_run(config={}, output_path=out, run_id=run_id, resume=resume)
    for n, item_id in enumerate(ids):
        await run.finish_item(item_id, n, {"id": item_id, "n": n})
    return out


async def test_output_gets_each_finished_item_once(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        out = await _finish(journal, "r", ["a", "b", "c"], resume=False)
    assert [r["id"] for r in _lines(out)] == ["a", "b", "c"]
    assert _raw(tmp_path / "j.db").execute("SELECT output_offset FROM runs").fetchone()[0] == len(
        out.read_bytes()
    )


async def test_partial_and_uncommitted_lines_are_cut_and_reemitted(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        out = await _finish(journal, "r", ["a", "b"], resume=False)
    # A crash after appending lines whose offset was not committed, one of them partial:
    # the journal knows "c" as done but not emitted.
    conn = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    conn.execute(
        "INSERT INTO items (run_id, item_id, line_no, state, record, emitted, updated_at) "
        "VALUES ('r', 'c', 2, 'done', ?, 0, 0)",
        (orjson.dumps({"id": "c", "n": 2}),),
    )
    conn.close()
    with out.open("ab") as f:
        f.write(b'{"id":"c","n":2}\n{"id":"c","n"')
    with Journal.open(tmp_path / "j.db") as journal:
        journal.start_run(config={}, output_path=out, run_id="r", resume=True)
    assert sorted(r["id"] for r in _lines(out)) == ["a", "b", "c"]  # type: ignore[type-var]


async def test_output_shorter_than_recorded_is_rescanned(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        out = await _finish(journal, "r", ["a", "b", "c", "d"], resume=False)
    data = out.read_bytes()
    # The file lost its tail (second line half gone, rest missing).
    first = data.index(b"\n") + 1
    out.write_bytes(data[: first + 5])
    with Journal.open(tmp_path / "j.db") as journal:
        journal.start_run(config={}, output_path=out, run_id="r", resume=True)
    records = _lines(out)
    assert sorted(r["id"] for r in records) == ["a", "b", "c", "d"]  # type: ignore[type-var]
    assert len(records) == 4


# ----------------------------------------------------------------------------- lock


def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path):
        code = (
            "import sys\nfrom amr_async.journal import Journal, JournalLockedError\n"
            "try:\n    Journal.open(sys.argv[1])\nexcept JournalLockedError as e:\n"
            "    print(e); sys.exit(7)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 7, proc.stderr
        assert "already open for writing" in proc.stdout
        import os

        assert f"pid {os.getpid()}" in proc.stdout
    # Released on close: the next writer gets in.
    with Journal.open(path):
        pass


def test_same_process_second_open_is_refused_too(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db"), pytest.raises(JournalLockedError):
        Journal.open(tmp_path / "j.db")


async def test_new_output_path_on_resume_gets_every_finished_item(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        await _finish(journal, "r", ["a", "b"], resume=False)
    other = tmp_path / "moved.jsonl"
    with Journal.open(tmp_path / "j.db") as journal:
        journal.start_run(config={}, output_path=other, run_id="r", resume=True)
    assert sorted(r["id"] for r in _lines(other)) == ["a", "b"]  # type: ignore[type-var]


async def test_cache_hit_keeps_provider_and_model(tmp_path: Path) -> None:
    key = request_key("openai", _req())
    with Journal.open(tmp_path / "j.db") as journal:
        first = journal.start_run(config={}, run_id="r1")
        await first.record_call(key, _ok(), provider="openai", model="gpt-x", cost_usd=0.1)
        second = journal.start_run(config={}, run_id="r2", cache=True)
        assert await second.lookup_call(key) is not None
    row = (
        _raw(tmp_path / "j.db")
        .execute("SELECT provider, model, source, cost_usd FROM calls WHERE run_id = 'r2'")
        .fetchone()
    )
    assert row == ("openai", "gpt-x", "cache", 0.0)


def test_read_runs_reports_totals_without_the_lock(tmp_path: Path) -> None:
    import asyncio

    from amr_async.journal import read_runs

    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={"model": "m"}, run_id="r1")

        async def record() -> None:
            await run.record_call(
                request_key("openai", _req()), _ok(), provider="openai", model="m", cost_usd=0.2
            )

        asyncio.run(record())
        (summary,) = read_runs(tmp_path / "j.db")  # while the writer holds the journal
    assert summary.info.run_id == "r1"
    assert summary.info.config == {"model": "m"}
    assert summary.totals == CostTotals(1, 10, 20, 0.2)
    assert summary.as_dict()["by_stage"][""]["tokens"] == 30
