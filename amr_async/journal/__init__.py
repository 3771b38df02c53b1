"""The durable journal: exact resume after a crash, no teacher answer bought twice.

One SQLite file in WAL mode per run directory, written by one thread with group commit
(`_writer`), read concurrently. It holds:

- runs: id, secret-free config, start/stop, status, output offset (`Journal.start_run`);
- calls: every paid teacher answer under the content key of its request (`request_key`),
  committed before its caller sees it, so a resumed run is answered from the journal;
- items: per input item, each completed stage's output and provenance and the final record,
  so a resumed item restarts at its last completed stage;
- the output JSONL's committed length, making the output exactly-once (`_output`).

Errors are rooted at `JournalError` (tree in `_errors`).
"""

from amr_async.journal._cost import Budget as Budget
from amr_async.journal._cost import CostTotals as CostTotals
from amr_async.journal._errors import JournalClosedError as JournalClosedError
from amr_async.journal._errors import JournalDiskFullError as JournalDiskFullError
from amr_async.journal._errors import JournalError as JournalError
from amr_async.journal._errors import JournalLockedError as JournalLockedError
from amr_async.journal._errors import JournalSchemaError as JournalSchemaError
from amr_async.journal._errors import JournalStorageError as JournalStorageError
from amr_async.journal._keys import normalise_request as normalise_request
from amr_async.journal._keys import request_key as request_key
from amr_async.journal._report import RunSummary as RunSummary
from amr_async.journal._report import read_runs as read_runs
from amr_async.journal._schema import SCHEMA_VERSION as SCHEMA_VERSION
from amr_async.journal._store import ItemState as ItemState
from amr_async.journal._store import Journal as Journal
from amr_async.journal._store import JournaledCall as JournaledCall
from amr_async.journal._store import RunInfo as RunInfo
from amr_async.journal._store import RunJournal as RunJournal

__all__ = [
    "SCHEMA_VERSION",
    "Budget",
    "CostTotals",
    "ItemState",
    "Journal",
    "JournalClosedError",
    "JournalDiskFullError",
    "JournalError",
    "JournalLockedError",
    "JournalSchemaError",
    "JournalStorageError",
    "JournaledCall",
    "RunInfo",
    "RunJournal",
    "RunSummary",
    "normalise_request",
    "read_runs",
    "request_key",
]
