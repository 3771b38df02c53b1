"""The Rust core, as the rest of the package uses it.

Thin re-exports of `amr_async._core` with their Python types. Every function here
takes a batch, releases the GIL while it works, and runs on several threads where
that pays, so callers on an event loop should still hand a large batch to a thread
(`asyncio.to_thread`) rather than call it on the loop.

    extract_functions   Python functions (and methods) found in an LLM answer
    ast_hash, ast_size  AST-normalised 128-bit clone hash and a size measure
    count_tokens        offline token counts: cl100k_base, o200k_base, anthropic_estimate
    topk                exact dot-product top-k over float32/float16/int8 matrices
    hash_embed          the model-free feature-hashing embedder

`amr_async.ast_reference` is the pure-Python specification of `ast_hash`.
"""

from __future__ import annotations

from amr_async._core import (
    FunctionRecord as FunctionRecord,
)
from amr_async._core import (
    ast_hash as ast_hash,
)
from amr_async._core import (
    ast_normal_form as ast_normal_form,
)
from amr_async._core import (
    ast_size as ast_size,
)
from amr_async._core import (
    count_tokens as count_tokens,
)
from amr_async._core import (
    extract_functions as extract_functions,
)
from amr_async._core import (
    extract_functions_batch as extract_functions_batch,
)
from amr_async._core import (
    hash_embed as hash_embed,
)
from amr_async._core import (
    topk as topk,
)

ENCODINGS: tuple[str, ...] = ("cl100k_base", "o200k_base", "anthropic_estimate")
"""Names `count_tokens` accepts; the last is an over-estimate (see rust/src/tokens.rs)."""

__all__ = [
    "ENCODINGS",
    "FunctionRecord",
    "ast_hash",
    "ast_normal_form",
    "ast_size",
    "count_tokens",
    "extract_functions",
    "extract_functions_batch",
    "hash_embed",
    "topk",
]
