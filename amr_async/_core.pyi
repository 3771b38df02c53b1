"""Type stubs for the Rust extension `amr_async._core` (see rust/src/lib.rs)."""

import numpy as np
import numpy.typing as npt

__version__: str

def cosine_matrix(
    queries: npt.NDArray[np.float32], matrix: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Cosine similarity of each query row against each matrix row (q × n, float32).

    Zero-norm rows score 0. Releases the GIL. Raises ValueError on a dimension mismatch.
    """
