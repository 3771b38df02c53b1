"""Value types of the module database API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["pass", "fail", "unverified"]


@dataclass(frozen=True, slots=True)
class Module:
    """A function offered to the DB.

    Attributes:
        code: The function's source (one top-level ``def``; helpers may follow).
        tests: Tests it passed (source), "" when none.
        verdict: Verification verdict: only ``pass`` modules enter in the pipeline; the CLI's
            ``seed`` stores ``unverified`` ones.
        verified_at: Unix time of the verdict, None when unverified.
        run_id: Provenance: the pipeline run.
        item_id: Provenance: the instruction item.
        stage: Provenance: the stage that produced it (e.g. ``evolve``, ``seed``).
    """

    code: str
    tests: str = ""
    verdict: Verdict = "unverified"
    verified_at: float | None = None
    run_id: str | None = None
    item_id: str | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a module was not admitted.

    Attributes:
        index: Its position in the `add_many` input.
        reason: ``unparseable``, ``duplicate_ast`` or ``near_duplicate``.
        detail: Human-readable detail (parser message, or the module it duplicates).
        duplicate_of: Id of the stored module it duplicates, if any; -1 when it duplicates an
            earlier module of the same batch that was admitted (see `duplicate_name`).
        duplicate_name: That module's function name.
        similarity: Cosine similarity to it, for near-duplicates.
    """

    index: int
    reason: Literal["unparseable", "duplicate_ast", "near_duplicate"]
    detail: str
    duplicate_of: int | None = None
    duplicate_name: str | None = None
    similarity: float | None = None


@dataclass(frozen=True, slots=True)
class AddResult:
    """Outcome of `add_many`: admitted ids (input order) and rejections."""

    added: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredModule:
    """A module as stored (what `search` returns and `export` writes)."""

    id: int
    name: str
    signature: str
    docstring: str
    code: str
    tests: str
    ast_hash: str
    node_count: int
    embedder: str
    dim: int
    run_id: str | None
    item_id: str | None
    stage: str | None
    verdict: str
    verified_at: float | None
    added_at: float


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result: the module and its cosine similarity to the query."""

    score: float
    module: StoredModule


@dataclass(frozen=True, slots=True)
class Stats:
    """Size and configuration of a DB."""

    modules: int
    embedder: str
    dim: int
    vector_dtype: str
    index: str
    indexed: int
    vector_bytes: int
    metadata_bytes: int
    index_bytes: int
    by_verdict: dict[str, int]
