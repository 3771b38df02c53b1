"""`ModuleDB`: the asyncio face of the module store, with dedup, snapshots, merge and JSONL.

Admission (`add_many`) runs in this order, cheapest first:

1. parse: code that does not parse (or defines no function) is refused with the parser's reason;
2. exact duplicates: the normalised AST hash is looked up in the DB and in the batch;
3. embed only what is left (the expensive step for neural embedders);
4. near duplicates: a module whose cosine similarity to a stored module, or to an earlier
   module of the same batch, is at least `novelty_threshold` is refused, naming that module;
5. write (vectors, then one metadata transaction, then the index).

Writers are serialised by an `asyncio.Lock`; CPU work (parsing, hashing, embedding, scanning)
runs in worker threads, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from amr_async import _core
from amr_async.moduledb._embedders import Embedder
from amr_async.moduledb._errors import UnparseableCode
from amr_async.moduledb._source import FunctionInfo, describe_many
from amr_async.moduledb._store import ModuleStore, StoreConfig
from amr_async.moduledb._types import AddResult, Module, Rejection, SearchHit, Stats
from amr_async.moduledb._vectors import F32

DEFAULT_NOVELTY_THRESHOLD = 0.97
# IVF lists the near-duplicate check scans: a module at cosine >= 0.97 to a stored one sits in
# one of the stored module's nearest lists. Measured 2026-11-26 at 100k (800 lists,
# synthetic rank-32 vectors, 1,500 copies at cosine 0.97 / 0.98 / 0.995 of stored vectors):
# nprobe 1 / 2 / 4 / 8 / 16 found 1,379 / 1,485 / 1,499 / 1,500 / 1,500 of them at 0.22 /
# 0.29 / 0.36 / 0.47 / 0.67 ms of CPU per check, against 9.6 ms at the search default then
# (320 lists, scanned exactly).
NEAR_DUPLICATE_NPROBE = 16


class Snapshot:
    """A frozen read view: searches see exactly the modules stored when it was taken.

    Cheap to take (it fixes a count); valid until the DB is closed; may be shared by tasks.
    """

    def __init__(self, db: ModuleDB, count: int) -> None:
        self._db = db
        self.count = count

    def __len__(self) -> int:
        return self.count

    async def search(
        self,
        queries: Sequence[str],
        *,
        k: int = 5,
        min_similarity: float = -1.0,
        filters: Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Search as `ModuleDB.search` does, among this snapshot's modules only."""
        return await self._db._search(queries, k, min_similarity, filters, self.count)


class ModuleDB:
    """The functional-module database (async API). Tasks may share one instance.

    Open with `ModuleDB.open` (or ``async with ModuleDB.open(...) as db``); close with `aclose`.
    """

    def __init__(
        self,
        store: ModuleStore,
        embedder: Embedder,
        *,
        novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.novelty_threshold = novelty_threshold
        self._write = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path | str,
        embedder: Embedder,
        *,
        config: StoreConfig | None = None,
        novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD,
    ) -> ModuleDB:
        """Open (or create) the DB in directory `path` for `embedder`.

        Raises:
            EmbedderMismatch: The DB was built with another embedder.
            DimensionMismatch: The DB's dimension differs from the embedder's.
        """
        store = await asyncio.to_thread(
            ModuleStore, path, embedder=embedder.name, dim=embedder.dim, config=config
        )
        return cls(store, embedder, novelty_threshold=novelty_threshold)

    async def __aenter__(self) -> ModuleDB:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Save the index and close (waits for a running write)."""
        if self._closed:
            return
        async with self._write:
            self._closed = True
            await asyncio.shield(asyncio.to_thread(self.store.close))

    def __len__(self) -> int:
        return len(self.store)

    # -- admission --------------------------------------------------------------------------

    async def add_many(self, modules: Sequence[Module]) -> AddResult:
        """Admit the novel, parseable modules; see the module docstring for the order.

        Returns:
            Ids of the admitted modules (input order) and one `Rejection` per refused one.
        """
        return await self._add_many(modules, None)

    async def _add_many(
        self, modules: Sequence[Module], given: Sequence[F32 | None] | None
    ) -> AddResult:
        """`add_many`, with vectors already known for some modules (None: embed it)."""
        infos = await asyncio.to_thread(_describe_all, modules)
        async with self._write:
            result, _ = await self._admit(modules, infos, given)
        return result

    async def merge(self, additions: Sequence[Module]) -> AddResult:
        """Add a pipeline window's verified modules in a deterministic order.

        The order (item, stage, run, AST hash, code) does not depend on which task finished
        first, so which of two near-duplicates wins is reproducible. Readers holding a
        `Snapshot` keep seeing the state before the merge.
        """
        infos = await asyncio.to_thread(_describe_all, additions)
        order = sorted(
            range(len(additions)),
            key=lambda i: (
                additions[i].item_id or "",
                additions[i].stage or "",
                additions[i].run_id or "",
                _hash_key(infos[i]),
                additions[i].code,
            ),
        )
        async with self._write:
            result, kept = await self._admit(
                [additions[i] for i in order], [infos[i] for i in order]
            )
        # Report in the caller's positions: admitted ids by input order, rejections re-indexed.
        pairs = sorted((order[pos], mid) for pos, mid in zip(kept, result.added, strict=True))
        rejected = sorted(
            (_reindex(r, order[r.index]) for r in result.rejected), key=lambda r: r.index
        )
        return AddResult(added=[mid for _, mid in pairs], rejected=rejected)

    async def _admit(
        self,
        modules: Sequence[Module],
        infos: Sequence[FunctionInfo | UnparseableCode],
        given: Sequence[F32 | None] | None = None,
    ) -> tuple[AddResult, list[int]]:
        """Admit; returns the result and the input positions of the admitted modules.

        `given` holds per module a vector of this DB's embedder (an import carrying them), or
        None; only modules without one are embedded.
        """
        rejected: list[Rejection] = []
        parsed: list[int] = []
        for i, info in enumerate(infos):
            if isinstance(info, UnparseableCode):
                rejected.append(Rejection(i, "unparseable", f"module {i}: {info}"))
            else:
                parsed.append(i)
        known = await asyncio.to_thread(
            self.store.known_hashes,
            [_info(infos[i]).ast_hash for i in parsed],
        )
        fresh: list[int] = []
        first_in_batch: dict[str, int] = {}
        for i in parsed:
            info = _info(infos[i])
            if info.ast_hash in known:
                mid, name = known[info.ast_hash]
                rejected.append(
                    Rejection(
                        i,
                        "duplicate_ast",
                        f"same normalised AST as module {mid} ({name})",
                        duplicate_of=mid,
                        duplicate_name=name,
                    )
                )
            elif info.ast_hash in first_in_batch:
                j = first_in_batch[info.ast_hash]
                name = _info(infos[j]).name
                rejected.append(
                    Rejection(
                        i,
                        "duplicate_ast",
                        f"same normalised AST as batch module {j} ({name})",
                        duplicate_of=-1,
                        duplicate_name=name,
                    )
                )
            else:
                first_in_batch[info.ast_hash] = i
                fresh.append(i)
        if not fresh:
            return AddResult([], sorted(rejected, key=lambda r: r.index)), []
        vectors = await self._vectors_of(modules, fresh, given)
        keep, near = await asyncio.to_thread(self._novel, vectors, fresh, infos)
        rejected.extend(near)
        row_of = {i: row for row, i in enumerate(fresh)}
        kept_vectors = vectors[[row_of[i] for i in keep]]
        ids = await asyncio.to_thread(
            self.store.add,
            [modules[i] for i in keep],
            [_info(infos[i]) for i in keep],
            np.ascontiguousarray(kept_vectors),
        )
        return AddResult(ids, sorted(rejected, key=lambda r: r.index)), keep

    async def _vectors_of(
        self, modules: Sequence[Module], fresh: list[int], given: Sequence[F32 | None] | None
    ) -> F32:
        """Vectors of the `fresh` modules, in order: the given ones, the rest embedded."""
        if given is None:
            return await self.embedder.embed([modules[i].code for i in fresh])
        missing = [row for row, i in enumerate(fresh) if given[i] is None]
        vectors = np.empty((len(fresh), self.embedder.dim), np.float32)
        if missing:
            vectors[missing] = await self.embedder.embed([modules[fresh[r]].code for r in missing])
        for row, i in enumerate(fresh):
            vector = given[i]
            if vector is not None:
                vectors[row] = vector
        return vectors

    def _novel(
        self, vectors: F32, fresh: list[int], infos: Sequence[FunctionInfo | UnparseableCode]
    ) -> tuple[list[int], list[Rejection]]:
        """Split `fresh` into novel modules and near-duplicates (runs in a thread)."""
        threshold = self.novelty_threshold
        stored = self.store.search_vectors(
            vectors, k=1, min_similarity=threshold, nprobe=NEAR_DUPLICATE_NPROBE
        )
        stored_names = self.store.fetch(row[0][1] for row in stored if row)
        # The Rust kernel, not `vectors @ vectors.T`: a merge's batch is small, and NumPy's
        # product wakes OpenBLAS's threads, which then spin (~1 ms of CPU per pipeline item).
        within = _core.cosine_matrix(vectors, vectors)
        keep: list[int] = []
        kept_rows: list[int] = []
        rejected: list[Rejection] = []
        for row, i in enumerate(fresh):
            if stored[row]:
                score, mid = stored[row][0]
                name = stored_names[mid].name
                rejected.append(
                    Rejection(
                        i,
                        "near_duplicate",
                        f"cosine {score:.3f} ≥ {threshold} to module {mid} ({name})",
                        duplicate_of=mid,
                        duplicate_name=name,
                        similarity=score,
                    )
                )
                continue
            if kept_rows:
                sims = within[row, kept_rows]
                best = int(np.argmax(sims))
                if sims[best] >= threshold:
                    j = fresh[kept_rows[best]]
                    name = _info(infos[j]).name
                    rejected.append(
                        Rejection(
                            i,
                            "near_duplicate",
                            f"cosine {sims[best]:.3f} ≥ {threshold} to batch module {j} ({name})",
                            duplicate_of=-1,
                            duplicate_name=name,
                            similarity=float(sims[best]),
                        )
                    )
                    continue
            keep.append(i)
            kept_rows.append(row)
        return keep, rejected

    # -- reads ------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A frozen read view of the modules stored now (see `Snapshot`)."""
        return Snapshot(self, len(self.store))

    async def search(
        self,
        queries: Sequence[str],
        *,
        k: int = 5,
        min_similarity: float = -1.0,
        filters: Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """The `k` most similar stored modules for each query text, best first.

        Args:
            queries: Query texts (e.g. a sub-module's signature and docstring).
            k: Results per query at most.
            min_similarity: Drop results with a lower cosine similarity.
            filters: Metadata equality filters, e.g. ``{"verdict": "pass"}`` (a list value
                means any of); keys in `amr_async.moduledb.FILTERABLE`.

        Returns:
            One list per query; empty lists when the DB is empty.
        """
        return await self._search(queries, k, min_similarity, filters, None)

    async def _search(
        self,
        queries: Sequence[str],
        k: int,
        min_similarity: float,
        filters: Mapping[str, Any] | None,
        limit: int | None,
    ) -> list[list[SearchHit]]:
        if not queries:
            return []
        if len(self.store) == 0 or limit == 0:
            return [[] for _ in queries]
        vectors = await self.embedder.embed(list(queries))
        return await asyncio.to_thread(
            self.store.search,
            vectors,
            k=k,
            min_similarity=min_similarity,
            filters=filters,
            limit=limit,
        )

    async def stats(self) -> Stats:
        """Sizes and configuration of the DB."""
        return await asyncio.to_thread(self.store.stats)

    # -- JSONL ------------------------------------------------------------------------------

    async def export(self, path: Path | str, *, vectors: bool = True) -> int:
        """Write every module as one JSON object per line (id order); returns the count.

        With `vectors`, each line also carries its embedding (``vector``: base64 of the
        little-endian float16 values), so that `import_jsonl` into a DB with the same
        embedder need not embed again: with a neural embedder at ~30 functions/s per core,
        re-embedding a million modules takes hours. ~1 KB more per 384-d line.
        """
        return await asyncio.to_thread(_export, self.store, Path(path), vectors)

    async def import_jsonl(
        self, path: Path | str, *, batch: int = 1000
    ) -> tuple[AddResult, list[str]]:
        """Add the modules of a JSONL file (as `export` writes, or with just ``code``).

        A line's ``vector`` is used as is when its ``embedder`` and ``dim`` are this DB's;
        otherwise (or without one) the code is embedded. Dedup applies either way.
        Bad lines are reported as ``file:line: reason`` and skipped; the rest goes on.

        Returns:
            The combined admission result (indexes are 0-based line numbers of the file) and
            the bad-line errors.
        """
        path = Path(path)
        errors: list[str] = []
        added: list[int] = []
        rejected: list[Rejection] = []
        pending: list[tuple[int, Module, F32 | None]] = []

        async def flush() -> None:
            result = await self._add_many([m for _, m, _ in pending], [v for _, _, v in pending])
            added.extend(result.added)
            rejected.extend(_reindex(r, pending[r.index][0]) for r in result.rejected)
            pending.clear()

        for lineno, line in await asyncio.to_thread(_read_lines, path):
            try:
                module, vector = _module_from_json(line, self.embedder)
                pending.append((lineno - 1, module, vector))
            except ValueError as exc:
                errors.append(f"{path}:{lineno}: {exc}")
            if len(pending) >= batch:
                await flush()
        if pending:
            await flush()
        return AddResult(added, rejected), errors


def _describe_all(modules: Sequence[Module]) -> list[FunctionInfo | UnparseableCode]:
    return describe_many([m.code for m in modules])


def _info(info: FunctionInfo | UnparseableCode) -> FunctionInfo:
    assert isinstance(info, FunctionInfo)
    return info


def _hash_key(info: FunctionInfo | UnparseableCode) -> str:
    return info.ast_hash if isinstance(info, FunctionInfo) else ""


def _reindex(r: Rejection, index: int) -> Rejection:
    return Rejection(index, r.reason, r.detail, r.duplicate_of, r.duplicate_name, r.similarity)


def _export(store: ModuleStore, path: Path, vectors: bool) -> int:
    n = 0
    view = store.view()
    with path.open("wb") as f:
        for m in store.iter_modules():
            obj = asdict(m)
            if vectors and m.id < view.count:
                row = view.rows_f32(np.array([m.id], np.int64))[0]
                obj["vector"] = base64.b64encode(row.astype("<f2").tobytes()).decode("ascii")
            f.write(orjson.dumps(obj) + b"\n")
            n += 1
    return n


def _read_lines(path: Path) -> list[tuple[int, str]]:
    with path.open(encoding="utf-8") as f:
        return [(i, line) for i, line in enumerate(f, start=1) if line.strip()]


_MODULE_FIELDS = ("tests", "verdict", "verified_at", "run_id", "item_id", "stage")


def _module_from_json(line: str, embedder: Embedder) -> tuple[Module, F32 | None]:
    """The module of one JSONL line, and its vector when it carries one of `embedder`."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    code = obj.get("code")
    if not isinstance(code, str):
        raise ValueError("field 'code': missing or not a string")
    kwargs = {f: obj[f] for f in _MODULE_FIELDS if obj.get(f) is not None}
    if kwargs.get("verdict", "unverified") not in ("pass", "fail", "unverified"):
        raise ValueError(f"field 'verdict': {kwargs['verdict']!r} is not pass/fail/unverified")
    return Module(code=code, **kwargs), _vector_from_json(obj, embedder)


def _vector_from_json(obj: dict[str, Any], embedder: Embedder) -> F32 | None:
    encoded = obj.get("vector")
    if encoded is None or obj.get("embedder") != embedder.name or obj.get("dim") != embedder.dim:
        return None  # none, or another embedder's: embed the code instead
    if not isinstance(encoded, str):
        raise ValueError("field 'vector': expected a base64 string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"field 'vector': not base64 ({exc})") from exc
    if len(raw) != 2 * embedder.dim:
        raise ValueError(
            f"field 'vector': {len(raw)} bytes, expected {2 * embedder.dim} "
            f"({embedder.dim} float16 values)"
        )
    vector = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("field 'vector': not finite or all zero")
    return vector / norm


@asynccontextmanager
async def open_db(path: Path | str, embedder: Embedder, **kwargs: Any) -> AsyncIterator[ModuleDB]:
    """``async with open_db(path, embedder) as db``: open, yield, close."""
    db = await ModuleDB.open(path, embedder, **kwargs)
    try:
        yield db
    finally:
        await db.aclose()
