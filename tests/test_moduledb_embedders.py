"""Embedders: hash, MiniLM (NumPy forward pass), an embeddings endpoint through a transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from amr_async.moduledb import (
    DimensionMismatch,
    EmbedderUnavailable,
    HashEmbedder,
    HttpEmbeddingTransport,
    MiniLMEmbedder,
    ModuleDB,
    OpenAIEmbedder,
)


def test_hash_embedder_is_normalised_deterministic_and_lexical() -> None:
    e = HashEmbedder(384)
    v = e.embed_sync(["def parse_json_file(path):", "parseJsonFile", "draw a circle", ""])
    assert v.shape == (4, 384)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-5)
    assert not v[3].any()  # nothing to hash → zero vector, not NaN
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]
    np.testing.assert_array_equal(
        v, e.embed_sync(["def parse_json_file(path):", "parseJsonFile", "draw a circle", ""])
    )


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_minilm_tokenises_like_bert_uncased(minilm: MiniLMEmbedder) -> None:
    enc = minilm.tokenizer.encode("Hello world")
    assert enc.tokens == ["[CLS]", "hello", "world", "[SEP]"]
    long = minilm.tokenizer.encode("word " * 1000)
    assert len(long.ids) == 256  # truncated like sentence-transformers' max_seq_length


def test_minilm_embeds_meaning(minilm: MiniLMEmbedder) -> None:
    v = minilm.embed_sync(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "A man is riding a horse.",
            "def add(a, b): return a + b",
            "def sum_two(x, y): return x + y",
        ]
    )
    assert v.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    assert v[3] @ v[4] > v[3] @ v[2] + 0.3


def test_minilm_padding_does_not_change_results(minilm: MiniLMEmbedder) -> None:
    short = "sort a list of numbers"
    alone = minilm.embed_sync([short])
    batched = minilm.embed_sync([short, "a much longer text " * 20 + "about parsing files"])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)


def test_minilm_missing_model_files_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMR_ASYNC_MINILM_DIR", str(tmp_path))
    with pytest.raises(EmbedderUnavailable, match=r"model\.safetensors is missing"):
        MiniLMEmbedder()


class FakeTransport:
    """A transport double returning fixed-dimension vectors, recording requests."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.calls: list[tuple[str, int]] = []

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append((model, len(texts)))
        return [[float(len(t) + j) for j in range(self.dim)] for t in texts]


async def test_openai_embedder_batches_and_checks_dimension(tmp_path: Path) -> None:
    transport = FakeTransport(8)
    e = OpenAIEmbedder("text-embedding-3-small", 8, transport, batch_size=3)
    v = await e.embed([f"t{i}" for i in range(7)])
    assert v.shape == (7, 8)
    assert transport.calls == [("text-embedding-3-small", 3)] * 2 + [("text-embedding-3-small", 1)]
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(DimensionMismatch, match="returned 8-d vectors, expected 16"):
        await OpenAIEmbedder("m", 16, transport).embed(["x"])
    # The DB records the endpoint model as its embedder and refuses a different one.
    async with await ModuleDB.open(tmp_path / "db", e) as db:
        assert (await db.stats()).embedder == "openai:text-embedding-3-small"


@pytest.fixture
async def embeddings_server() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), **body})
        if body["model"] == "broken":
            return web.json_response({"error": {"message": "no such model"}}, status=404)
        data = [
            {"object": "embedding", "index": i, "embedding": [1.0, float(i), 0.0]}
            for i in range(len(body["input"]))
        ]
        return web.json_response({"object": "list", "data": list(reversed(data))})

    app = web.Application()
    app.router.add_post("/v1/embeddings", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_http_transport_speaks_the_embeddings_protocol(
    embeddings_server: tuple[str, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = embeddings_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    transport = HttpEmbeddingTransport(url)
    vectors = await OpenAIEmbedder("m", 3, transport).embed(["a", "b", "c"])
    assert seen[0] == {"auth": "Bearer sk-secret-value", "model": "m", "input": ["a", "b", "c"]}
    # Answers are put back in input order by their `index`.
    assert vectors[2][1] > vectors[1][1] > vectors[0][1]
    with pytest.raises(EmbedderUnavailable, match="404: no such model") as info:
        await OpenAIEmbedder("broken", 3, transport).embed(["a"])
    assert "sk-secret" not in str(info.value)
    assert "sk-secret" not in repr(transport)
