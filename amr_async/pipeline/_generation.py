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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from amr_async.core import hash_embed, topk
from amr_async.journal import Journal, RunJournal
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


class Dedup:
    """Exact and near-duplicate detection for short texts (instructions).

    Exact: SHA-256 of the `normalised` text. Near: cosine of the model-free hash embedding
    (`amr_async.core.hash_embed`: word and identifier features) at or above
    `max_similarity`. Memory: 32 bytes + one float32 row (1.5 KB at 384-d) per text; a check is one
    top-1 scan over the kept rows.
    Not thread-safe; used from one task.

    Args:
        max_similarity: a text this similar to a kept one is a near duplicate.
        dim: embedding dimension.
    """

    def __init__(self, max_similarity: float = 0.9, dim: int = 384) -> None:
        if not 0.0 < max_similarity <= 1.0:
            raise ValueError(f"max_similarity must be in (0, 1], got {max_similarity}")
        self.max_similarity = max_similarity
        self._hashes: dict[bytes, str] = {}
        self._ids: list[str] = []
        self._rows: npt.NDArray[np.float32] = np.zeros((64, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    @staticmethod
    def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        """The embeddings `check` wants (CPU work: call it off the event loop)."""
        return hash_embed(texts) if texts else np.zeros((0, 384), dtype=np.float32)

    def check(self, text: str, vector: npt.NDArray[np.float32]) -> str | None:
        """Why `text` duplicates a kept text (`duplicate:ID`, `near_duplicate:ID:COS`)."""
        key = hashlib.sha256(normalised(text).encode()).digest()
        if key in self._hashes:
            return f"duplicate:{self._hashes[key]}"
        n = len(self._ids)
        if n and vector.any():
            # The Rust top-k, not `rows @ vector`: NumPy's product wakes OpenBLAS's threads,
            # which then spin on cores the event loop and the teacher calls need.
            scores, rows = topk(vector[None, :], self._rows[:n], 1)
            best, score = int(rows[0, 0]), float(scores[0, 0])
            if score >= self.max_similarity:
                return f"near_duplicate:{self._ids[best]}:{score:.3f}"
        return None

    def add(self, item_id: str, text: str, vector: npt.NDArray[np.float32]) -> None:
        """Keep `text` (checked first with `check`)."""
        key = hashlib.sha256(normalised(text).encode()).digest()
        self._hashes.setdefault(key, item_id)
        n = len(self._ids)
        if n == len(self._rows):
            grown = np.zeros((2 * n, self._rows.shape[1]), dtype=np.float32)
            grown[:n] = self._rows
            self._rows = grown
        self._rows[n] = vector
        self._ids.append(item_id)


__all__ = [
    "Dedup",
    "TeacherSettings",
    "add_teacher_arguments",
    "journaled_teacher",
    "normalised",
    "open_run",
]
