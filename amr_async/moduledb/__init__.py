"""Functional-module database: verified functions, retrieval, dedup, up to millions of entries.

Layers (data flow):

- `_source`: parse a function, describe it (name, signature, docstring), normalised AST hash.
- `_embedders`: text → vectors (`hash`, `minilm`, `openai`), one interface.
- `_vectors`: the compact memory-mapped vector file (f16, or int8 with per-row scales).
- `_index`: exact scan, hnswlib, usearch and IVF indexes over it.
- `_store`: `ModuleStore`, SQLite metadata + vectors + index, crash-consistent, thread-safe.
- `_db`: `ModuleDB`, the asyncio API (dedup on admission, snapshots, merge, JSONL).
"""

from amr_async.moduledb._db import DEFAULT_NOVELTY_THRESHOLD as DEFAULT_NOVELTY_THRESHOLD
from amr_async.moduledb._db import ModuleDB as ModuleDB
from amr_async.moduledb._db import Snapshot as Snapshot
from amr_async.moduledb._db import open_db as open_db
from amr_async.moduledb._embedders import Embedder as Embedder
from amr_async.moduledb._embedders import EmbeddingTransport as EmbeddingTransport
from amr_async.moduledb._embedders import HashEmbedder as HashEmbedder
from amr_async.moduledb._embedders import HttpEmbeddingTransport as HttpEmbeddingTransport
from amr_async.moduledb._embedders import MiniLMEmbedder as MiniLMEmbedder
from amr_async.moduledb._embedders import OpenAIEmbedder as OpenAIEmbedder
from amr_async.moduledb._embedders import make_embedder as make_embedder
from amr_async.moduledb._errors import CorruptDatabase as CorruptDatabase
from amr_async.moduledb._errors import DimensionMismatch as DimensionMismatch
from amr_async.moduledb._errors import EmbedderMismatch as EmbedderMismatch
from amr_async.moduledb._errors import EmbedderUnavailable as EmbedderUnavailable
from amr_async.moduledb._errors import ModuleDBError as ModuleDBError
from amr_async.moduledb._errors import UnparseableCode as UnparseableCode
from amr_async.moduledb._index import IvfIndex as IvfIndex
from amr_async.moduledb._source import describe as describe
from amr_async.moduledb._source import extract_functions as extract_functions
from amr_async.moduledb._source import stub_of as stub_of
from amr_async.moduledb._store import FILTERABLE as FILTERABLE
from amr_async.moduledb._store import ModuleStore as ModuleStore
from amr_async.moduledb._store import StoreConfig as StoreConfig
from amr_async.moduledb._types import AddResult as AddResult
from amr_async.moduledb._types import Module as Module
from amr_async.moduledb._types import Rejection as Rejection
from amr_async.moduledb._types import SearchHit as SearchHit
from amr_async.moduledb._types import Stats as Stats
from amr_async.moduledb._types import StoredModule as StoredModule
from amr_async.moduledb._vectors import VectorView as VectorView

__all__ = [
    "DEFAULT_NOVELTY_THRESHOLD",
    "FILTERABLE",
    "AddResult",
    "CorruptDatabase",
    "DimensionMismatch",
    "Embedder",
    "EmbedderMismatch",
    "EmbedderUnavailable",
    "EmbeddingTransport",
    "HashEmbedder",
    "HttpEmbeddingTransport",
    "IvfIndex",
    "MiniLMEmbedder",
    "Module",
    "ModuleDB",
    "ModuleDBError",
    "ModuleStore",
    "OpenAIEmbedder",
    "Rejection",
    "SearchHit",
    "Snapshot",
    "Stats",
    "StoreConfig",
    "StoredModule",
    "UnparseableCode",
    "VectorView",
    "describe",
    "extract_functions",
    "make_embedder",
    "open_db",
    "stub_of",
]
