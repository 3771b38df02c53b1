"""What instruction generation and the seed DB share: the teacher door and the dedup.

Both send every call through `JournaledTeacher` (dispatcher + journal), in rounds: the
prompts of a round are fixed from the state at its start (and a seeded RNG), its calls go
out together, and its answers are taken in prompt order. So the result depends only on the
inputs, the seed and the teacher's answers, not on timing; and running the same command
again with the same journal answers every call already made from the journal: a killed
run resumes by being run again, paying for nothing twice.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from amr_async.core import hash_embed, topk
from amr_async.journal import Journal, RunJournal
from amr_async.moduledb import IvfIndex, VectorView
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.teacher.types import Provider


def add_teacher_arguments(
    p: argparse.ArgumentParser, *, temperature: float, required: bool = True
) -> None:
    """The teacher and journal options of a generation command.

    Args:
        p: the command's parser.
        temperature: the default sampling temperature.
        required: `--journal` and `--model` are required (else the command checks).
    """
    g = p.add_argument_group("teacher")
    g.add_argument("--journal", type=Path, required=required, help="SQLite journal of the calls")
    g.add_argument("--run-id", help="journal run (default: one per command; rerun = resume)")
    g.add_argument("--provider", choices=[x.value for x in Provider], default="openai")
    g.add_argument("--base-url", help="server root (default: the provider's public API)")
    g.add_argument("--model", required=required, help="teacher model")
    g.add_argument("--max-tokens", type=int, default=1024, help="output tokens per call")
    g.add_argument("--temperature", type=float, default=temperature, help=f"default {temperature}")
    g.add_argument("--prompts", type=Path, help="directory of <kind>.toml templates")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    g.add_argument(
        "--round-size", type=int, default=32, help="calls per round (sent together; default 32)"
    )


@dataclass(slots=True, frozen=True)
class TeacherSettings:
    """Model and sampling of a generation command's calls."""

    model: str
    max_tokens: int
    temperature: float


def open_run(journal: Journal, run_id: str, config: dict[str, Any]) -> RunJournal:
    """Start `run_id`, or resume it when the journal has it (its answers are reused)."""
    resume = journal.run_info(run_id) is not None
    return journal.start_run(config=config, run_id=run_id, resume=resume)


@contextlib.asynccontextmanager
async def journaled_teacher(
    args: argparse.Namespace, run: RunJournal
) -> AsyncIterator[JournaledTeacher]:
    """A `JournaledTeacher` over a dispatcher and a wire client built from `args`."""
    from amr_async.scheduler import Dispatcher, Endpoint, PricingTable
    from amr_async.teacher.factory import make_client

    provider = Provider(args.provider)
    pricing = PricingTable.load([])
    client = make_client(provider, base_url=args.base_url)
    dispatcher = Dispatcher([Endpoint(client)], pricing=pricing)
    try:
        yield JournaledTeacher(
            dispatcher.submit,
            provider=provider,
            run=run,
            price=partial(pricing.cost, cached_in_input=provider is Provider.OPENAI),
        )
    finally:
        with contextlib.suppress(Exception):
            await dispatcher.aclose(grace_s=0.0)
        await client.aclose()


_NOT_WORD = re.compile(r"[^\w]+")


def normalised(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form (for exact dedup)."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split())


# Texts checked together in `Dedup.sieve`: each against the kept rows in one index search,
# and against the chunk's earlier texts in one chunk × chunk product.
_SIEVE_CHUNK = 256
# The IVF search of `Dedup` (`bench/dedup.py`, 2026-11-27, synthetic random 20-word texts:
# no cluster structure, the hard case for lists). At 1M texts (3,238 lists, rerank 32, load
# 0.6-2.3), nprobe 64 / 128 / 192 / 256 found 0.967 / 0.977 / 0.983 / 0.985 of the near
# duplicates the exact scan finds, for 0.47 / 0.66 / 0.97 / 1.08 ms per text (the scan: 97
# ms); at 100k (810 lists), nprobe 64 0.992-0.995 and 256 0.9995. A run of a million texts
# makes a million teacher calls: 1 ms of a worker thread per text is cheap next to a near
# duplicate kept. A near duplicate is the text's nearest row: re-ranking 32 candidates
# found as many as 128 (0.9949 both at 100k, nprobe 64).
DEDUP_NPROBE = 256
DEDUP_RERANK = 32


class Dedup:
    """Exact and near-duplicate detection for short texts (instructions), up to millions.

    Exact: SHA-256 of the `normalised` text. Near: the dot product of the model-free hash
    embeddings (`amr_async.core.hash_embed`: word and identifier features, unit length) at or
    above `max_similarity` with a kept text; the kept embeddings are float16 rows, so scores
    are cosines to ~1e-3.

    The kept rows are searched through the module DB's IVF index (`IvfIndex`): an exact scan
    below `IVF_MIN_TRAIN` rows (10,000), above it the lists nearest to the text, re-ranked
    exactly. Until 2026-11-27 every check scanned every kept row on the event loop: 82-97 ms
    per text at 1M texts (`bench/dedup.py`), days of scanning for a run of millions. Now ~1
    ms per text at 1M, finding 0.985 of the near duplicates the scan finds there (see
    `DEDUP_NPROBE`). Memory: ~1.2 KB per text at 1M (a float16 row of 768 B at 384-d, the
    index's 64 B, the hash, the id); the float32 row alone took 1.5 KB before.

    `sieve` takes a batch, in order, as if each text were checked against the kept ones and
    kept if new before the next. Below `IVF_MIN_TRAIN` rows the verdicts do not depend on how
    texts are batched; above, a near duplicate the probed lists miss is still caught when it
    falls in the same batch (texts of a batch are compared exactly), so only the batches must
    be the same to give the same verdicts (the generation commands' rounds are fixed). Not
    thread-safe: one caller at a time (it may be a worker thread).

    Args:
        max_similarity: a text this similar to a kept one is a near duplicate.
        dim: embedding dimension.
        min_train: rows before the index trains (default `IVF_MIN_TRAIN`).
        nprobe: lists probed per text (default `DEDUP_NPROBE`).
        rerank: candidates per text scored exactly (default `DEDUP_RERANK`).
    """

    def __init__(
        self,
        max_similarity: float = 0.9,
        dim: int = 384,
        *,
        min_train: int | None = None,
        nprobe: int = DEDUP_NPROBE,
        rerank: int = DEDUP_RERANK,
    ) -> None:
        if not 0.0 < max_similarity <= 1.0:
            raise ValueError(f"max_similarity must be in (0, 1], got {max_similarity}")
        self.max_similarity = max_similarity
        self.dim = dim
        self._hashes: dict[bytes, str] = {}
        self._ids: list[str] = []
        self._rows: npt.NDArray[np.float16] = np.zeros((1024, dim), dtype=np.float16)
        self._index = IvfIndex(dim, self._view, min_train=min_train, nprobe=nprobe, rerank=rerank)

    def __len__(self) -> int:
        return len(self._ids)

    def _view(self, count: int) -> VectorView:
        # Rows are only appended, never rewritten, and a grown array is a new one: a view
        # handed to the index's background retraining stays valid.
        return VectorView(count, self.dim, "f16", self._rows, None)

    @staticmethod
    def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        """The texts' embeddings, as `sieve` computes them (unit rows; zero without features)."""
        return hash_embed(texts) if texts else np.zeros((0, 384), dtype=np.float32)

    def sieve(self, entries: Sequence[tuple[str, str]]) -> list[str | None]:
        """Check and keep a batch of (id, text) in order (CPU work: call it off the event loop).

        Returns, per entry, None when it was kept, else why it duplicates a text kept before it
        (here or in an earlier batch): ``duplicate:ID`` or ``near_duplicate:ID:COS``.
        """
        verdicts: list[str | None] = []
        for start in range(0, len(entries), _SIEVE_CHUNK):  # the in-chunk matrix is chunk²
            verdicts += self._sieve_chunk(entries[start : start + _SIEVE_CHUNK])
        return verdicts

    def _sieve_chunk(self, entries: Sequence[tuple[str, str]]) -> list[str | None]:
        if not entries:
            return []
        m = len(entries)
        vectors = np.ascontiguousarray(self.embed([t for _, t in entries]), np.float32)
        start = len(self._ids)
        # The kept rows' best match for every text at once, and every text against the
        # chunk's own rows (earlier ones count only if kept), with the same kernel and the
        # same float16 rows as the index's exact scores.
        if start:
            best_scores, best_rows = self._index.search(vectors, 1, self._view(start))
        else:
            best_scores, best_rows = np.full((m, 1), -np.inf, np.float32), np.full((m, 1), -1)
        rows = vectors.astype(np.float16)
        scores, order = topk(vectors, rows, m)
        within = np.empty_like(scores)
        np.put_along_axis(within, order, scores, axis=1)  # within[i, j]: text i vs row j
        close = np.tril(within >= self.max_similarity, -1)
        verdicts: list[str | None] = []
        kept: dict[int, int] = {}  # chunk position -> row number
        for i, (item_id, text) in enumerate(entries):
            key = hashlib.sha256(normalised(text).encode()).digest()
            if key in self._hashes:
                verdicts.append(f"duplicate:{self._hashes[key]}")
                continue
            if vectors[i].any():
                score, owner = float(best_scores[i, 0]), int(best_rows[i, 0])
                for j in np.flatnonzero(close[i]).tolist():  # ascending: a tie keeps the earlier
                    if j in kept and within[i, j] > score:
                        score, owner = float(within[i, j]), kept[j]
                if owner >= 0 and score >= self.max_similarity:
                    verdicts.append(f"near_duplicate:{self._ids[owner]}:{score:.3f}")
                    continue
            self._hashes.setdefault(key, item_id)
            kept[i] = len(self._ids)
            self._ids.append(item_id)
            verdicts.append(None)
        self._append(rows[list(kept)])
        return verdicts

    def _append(self, rows: npt.NDArray[np.float16]) -> None:
        start, end = len(self._ids) - len(rows), len(self._ids)
        if end > len(self._rows):
            grown = np.zeros((max(end, 2 * len(self._rows)), self.dim), dtype=np.float16)
            grown[:start] = self._rows[:start]
            self._rows = grown
        self._rows[start:end] = rows
        self._index.add(rows.astype(np.float32), start)

    def close(self) -> None:
        """Stop the index's background retraining, if one runs."""
        self._index.close()


__all__ = [
    "Dedup",
    "TeacherSettings",
    "add_teacher_arguments",
    "journaled_teacher",
    "normalised",
    "open_run",
]
