"""The journal's SQLite schema and its migrations.

The schema version lives in `PRAGMA user_version`. `MIGRATIONS[i]` takes a journal from
version i to i + 1; opening a journal applies the missing ones in one transaction each, so
a crash mid-migration leaves the previous version whole. A journal newer than this program
is refused rather than guessed at.

Rows carry long texts (answers, records), so the tables keep rowids (SQLite advises
against WITHOUT ROWID for rows this large) with unique indexes for the natural keys.

Tables:
    runs        one row per run: id, config (secret-free JSON), times, status, output offset
    calls       one row per journaled teacher answer, by request key and run_id
                (indexed on demand, see v3)
    items       one row per input item: state, last completed stage, verdict, final record
    item_stages one row per completed stage of an item: its output and provenance
"""

from __future__ import annotations

import sqlite3

from amr_async.journal._errors import JournalSchemaError

APPLICATION_ID = 0x616D7231  # "amr1": marks the file as an amr-async journal

_V1 = """
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    config      TEXT NOT NULL,           -- JSON, secrets removed
    created_at  REAL NOT NULL,
    started_at  REAL,                    -- latest start (first run or resume)
    stopped_at  REAL,
    status      TEXT NOT NULL,    -- running|finished|partial|budget|stopped|failed|interrupted
    message     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    output_path TEXT,
    output_offset INTEGER NOT NULL DEFAULT 0  -- bytes of the output known complete
);
CREATE TABLE calls (
    run_id        TEXT NOT NULL,
    key           BLOB NOT NULL,          -- request_key(): SHA-256 of the normalised request
    item_id       TEXT,
    stage         TEXT,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    kind          TEXT NOT NULL,          -- OutcomeKind (ok | truncated)
    text          TEXT NOT NULL,
    finish_reason TEXT,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens   INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    cost_usd      REAL NOT NULL,
    request_id    TEXT,
    latency_s     REAL NOT NULL,
    source        TEXT NOT NULL,          -- wire | cache (answered from another run)
    created_at    REAL NOT NULL
);
-- Key first: serves both this run's lookup (key, run_id) and the cross-run cache (key).
CREATE UNIQUE INDEX calls_by_key ON calls (key, run_id);
CREATE TABLE items (
    run_id     TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    line_no    INTEGER NOT NULL,
    state      TEXT NOT NULL,            -- active | done | failed
    stage      TEXT,                     -- last completed stage
    verdict    TEXT,
    reason     TEXT,
    record     BLOB,                     -- the output line (JSON, no newline) once done
    emitted    INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    UNIQUE (run_id, item_id)
);
CREATE TABLE item_stages (
    run_id     TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    stage      TEXT NOT NULL,
    output     TEXT NOT NULL,            -- JSON
    provenance TEXT NOT NULL,            -- JSON
    created_at REAL NOT NULL,
    UNIQUE (run_id, item_id, stage)
);
"""

# v2: resume scans for finished-but-unemitted items; a partial index keeps that scan
# proportional to the few such items rather than to the whole run.
_V2 = """
CREATE INDEX items_unemitted ON items (run_id, item_id) WHERE state = 'done' AND emitted = 0;
"""

# v3: the key index is no longer kept up to date by every write. A fresh run never looks
# a key up, and keeping an index of random 32-byte keys costs about one page write per
# journaled call (a third of the writer's CPU at 20k calls, more as the journal grows).
# `RunJournal` creates it (`CALLS_BY_KEY`, one sort over the table) when a run first needs
# lookups: a resumed run with journaled calls, or the cross-run cache. It is no longer
# UNIQUE: two identical requests in flight at once are both paid and both journaled.
_V3 = """
DROP INDEX calls_by_key;
"""

# Serves this run's lookup (key, run_id) and the cross-run cache (key).
CALLS_BY_KEY = "CREATE INDEX IF NOT EXISTS calls_by_key ON calls (key, run_id)"

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the journal on `conn` up to `target`, one transaction per step.

    Args:
        conn: a connection in autocommit mode (`isolation_level=None`).
        target: the version to reach (tests use lower ones to build old journals).

    Returns:
        The version found before migrating (0 for a new file).

    Raises:
        JournalSchemaError: the file is not an amr-async journal, or is newer than
            this program knows.
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if found == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise JournalSchemaError("not an amr-async journal: the file holds other tables")
    elif app_id != APPLICATION_ID:
        raise JournalSchemaError("not an amr-async journal (application_id differs)")
    if found > SCHEMA_VERSION:
        raise JournalSchemaError(
            f"journal schema v{found} is newer than this amr-async knows (v{SCHEMA_VERSION}); "
            "upgrade amr-async to open it"
        )
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (ours hold no ';' inside literals)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
