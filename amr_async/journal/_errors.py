"""Errors the journal raises.

    JournalError                 root; every journal failure derives from it
    ├── JournalLockedError       another process holds the journal open for writing
    ├── JournalSchemaError       the file's schema is newer than this program, or not ours
    ├── JournalStorageError      a write could not be made durable (I/O error)
    │   └── JournalDiskFullError the disk (or the file-size limit) is full
    └── JournalClosedError       used after `close()` (misuse, also a RuntimeError)

After a storage error the journal refuses further writes: what was committed before it
stays whole (SQLite rolls the failed transaction back), and a later `--resume` goes on.
"""

from __future__ import annotations


class JournalError(Exception):
    """Root of every journal error."""


class JournalLockedError(JournalError):
    """Another process holds the journal open for writing."""


class JournalSchemaError(JournalError):
    """The journal's schema cannot be used by this program."""


class JournalStorageError(JournalError):
    """A write to the journal or the output could not be made durable."""


class JournalDiskFullError(JournalStorageError):
    """No space left (disk full or file-size limit reached)."""


class JournalClosedError(JournalError, RuntimeError):
    """The journal was used after it was closed."""
