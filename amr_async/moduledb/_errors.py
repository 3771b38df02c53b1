"""Errors raised by the module database.

Tree::

    ModuleDBError
    ├── UnparseableCode        code that CPython cannot parse, or holds no function
    ├── DimensionMismatch      an embedder or vector whose dimension differs from the DB's
    ├── EmbedderMismatch       an embedder other than the one the DB was built with
    ├── EmbedderUnavailable    an embedder whose dependencies or model files are missing
    └── CorruptDatabase        files that disagree beyond what crash recovery repairs
"""

from __future__ import annotations


class ModuleDBError(Exception):
    """Root of every error the module database raises."""


class UnparseableCode(ModuleDBError, ValueError):
    """A module's code does not parse as Python, or defines no function."""


class DimensionMismatch(ModuleDBError, ValueError):
    """A vector or embedder dimension differs from the dimension recorded in the DB."""


class EmbedderMismatch(ModuleDBError, ValueError):
    """The DB was built with another embedder; vectors from two embedders do not compare."""


class EmbedderUnavailable(ModuleDBError, RuntimeError):
    """An embedder cannot run here (a dependency or its model files are missing)."""


class CorruptDatabase(ModuleDBError, RuntimeError):
    """The metadata and the vector file disagree in a way recovery cannot repair."""
