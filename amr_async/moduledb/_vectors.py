"""The vector file: one compact row per module, appended, memory-mapped for reading.

Layout: a 64-byte header (magic, format version, dtype code, dimension), then row *i* of module
*i*. ``f16`` rows hold ``dim`` half floats (2 bytes each); ``int8`` rows hold ``dim`` signed bytes,
with the float32 scales (``value = byte × scale``) in a sidecar file ``<name>.scales`` so that the
matrix stays contiguous for the scan kernels: a 384-d module costs 768 or 388 bytes.

Rows are written before the SQLite transaction that refers to them commits, so after a crash the
file can only be *longer* than the metadata; `truncate` drops the unreferenced tail on reopen.
Reads map the file (``numpy.memmap``): reopening is O(1) and only touched pages are resident.
Rows are never rewritten, so a view taken earlier stays valid while the file grows.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from amr_async.moduledb._errors import CorruptDatabase, DimensionMismatch

VectorDType = Literal["f16", "int8"]

_MAGIC = b"AMRVEC01"
_HEADER = 64
_CODES: dict[str, int] = {"f16": 1, "int8": 2}
_NAMES = {v: k for k, v in _CODES.items()}

F32 = npt.NDArray[np.float32]


class VectorView:
    """A read-only view of the first `count` rows (a snapshot of the file).

    Attributes:
        count: Number of rows visible.
        dim: Vector dimension.
        dtype: ``"f16"`` or ``"int8"``.
        matrix: The stored rows (float16 or int8), shape ``(count, dim)``.
        scales: Per-row float32 scales for int8, else None.
    """

    __slots__ = ("count", "dim", "dtype", "matrix", "scales")

    def __init__(
        self,
        count: int,
        dim: int,
        dtype: VectorDType,
        matrix: npt.NDArray[np.float16] | npt.NDArray[np.int8],
        scales: F32 | None,
    ) -> None:
        self.count = count
        self.dim = dim
        self.dtype = dtype
        self.matrix = matrix
        self.scales = scales

    def rows_f32(self, ids: npt.NDArray[np.int64]) -> F32:
        """Decode the given rows to float32."""
        rows = np.asarray(self.matrix[ids], dtype=np.float32)
        if self.scales is not None:
            rows *= self.scales[ids, None]
        return rows

    def block_f32(self, start: int, stop: int) -> F32:
        """Decode rows ``start:stop`` to float32."""
        rows = np.asarray(self.matrix[start:stop], dtype=np.float32)
        if self.scales is not None:
            rows *= self.scales[start:stop, None]
        return rows


def quantise_int8(vectors: F32) -> tuple[npt.NDArray[np.int8], F32]:
    """Symmetric per-row int8 quantisation: returns (bytes, scales)."""
    peak = np.abs(vectors).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.rint(vectors / scales[:, None]).clip(-127, 127).astype(np.int8)
    return q, scales


class VectorFile:
    """Append-only vector storage; one writer, any number of readers (views).

    Not safe for concurrent `append` calls: the store serialises writers.
    """

    def __init__(self, path: Path, *, dim: int, dtype: VectorDType) -> None:
        """Open or create the file at `path` (and its scales sidecar for int8).

        Raises:
            DimensionMismatch: When an existing file has another dimension.
            CorruptDatabase: When the header is not ours or names another dtype.
        """
        self.path = path
        self.scales_path = path.with_name(path.name + ".scales")
        self.dim = dim
        self.dtype: VectorDType = dtype
        if not path.exists():
            with path.open("wb") as f:
                header = struct.pack("<8sIII", _MAGIC, 1, _CODES[dtype], dim)
                f.write(header.ljust(_HEADER, b"\0"))
                f.flush()
                os.fsync(f.fileno())
        if dtype == "int8" and not self.scales_path.exists():
            self.scales_path.touch()
        with path.open("rb") as f:
            magic, _version, code, file_dim = struct.unpack("<8sIII", f.read(20))
        if magic != _MAGIC:
            raise CorruptDatabase(f"{path}: not a vector file (bad magic)")
        if file_dim != dim:
            raise DimensionMismatch(f"{path}: file holds {file_dim}-d vectors, expected {dim}")
        if _NAMES.get(code) != dtype:
            raise CorruptDatabase(f"{path}: file holds {_NAMES.get(code)} rows, expected {dtype}")
        self.row_bytes = dim * 2 if dtype == "f16" else dim
        self._np_dtype = np.float16 if dtype == "f16" else np.int8
        self._mapped: npt.NDArray[np.float16] | npt.NDArray[np.int8] | None = None
        self._mapped_scales: F32 | None = None
        self._mapped_rows = 0

    @property
    def bytes_per_row(self) -> int:
        """Bytes one module's vector takes on disk (scale included)."""
        return self.row_bytes + (4 if self.dtype == "int8" else 0)

    def file_rows(self) -> int:
        """Complete rows present (a torn last row does not count)."""
        rows = (self.path.stat().st_size - _HEADER) // self.row_bytes
        if self.dtype == "int8":
            rows = min(rows, self.scales_path.stat().st_size // 4)
        return rows

    def truncate(self, rows: int) -> None:
        """Cut the file to `rows` rows (crash recovery: drop rows no metadata refers to)."""
        self._truncate(self.path, _HEADER + rows * self.row_bytes)
        if self.dtype == "int8":
            self._truncate(self.scales_path, rows * 4)
        self._mapped = None
        self._mapped_scales = None
        self._mapped_rows = 0

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        with path.open("r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _write_at(path: Path, offset: int, payload: bytes, *, durable: bool) -> None:
        with path.open("r+b") as f:
            f.seek(offset)
            f.write(payload)
            f.truncate()
            f.flush()
            if durable:
                os.fsync(f.fileno())

    def append(self, vectors: F32, *, at_row: int, durable: bool) -> None:
        """Write `vectors` (L2-normalised float32) as rows ``at_row, at_row+1, …``.

        Writing at an explicit row (not plain append) overwrites a tail left by a failed batch.

        Raises:
            DimensionMismatch: When the vectors' dimension differs.
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DimensionMismatch(f"vectors of shape {vectors.shape}, DB dimension {self.dim}")
        if self.dtype == "f16":
            self._write_at(
                self.path,
                _HEADER + at_row * self.row_bytes,
                vectors.astype(np.float16).tobytes(),
                durable=durable,
            )
            return
        q, scales = quantise_int8(vectors)
        self._write_at(self.path, _HEADER + at_row * self.row_bytes, q.tobytes(), durable=durable)
        self._write_at(self.scales_path, at_row * 4, scales.tobytes(), durable=durable)

    def view(self, count: int) -> VectorView:
        """A read view of the first `count` rows (all must be in the file).

        Raises:
            CorruptDatabase: When the file holds fewer rows than `count`.
        """
        if count > self._mapped_rows:
            rows = self.file_rows()
            if rows < count:
                raise CorruptDatabase(f"{self.path}: {rows} rows, metadata expects {count}")
            # Plain ndarray views of the maps (they keep the maps alive): indexing a
            # `numpy.memmap` subclass costs ~0.25 ms more per search.
            self._mapped = np.asarray(
                np.memmap(
                    self.path,
                    dtype=self._np_dtype,
                    mode="r",
                    offset=_HEADER,
                    shape=(rows, self.dim),
                )
            )
            if self.dtype == "int8":
                self._mapped_scales = np.asarray(
                    np.memmap(self.scales_path, dtype=np.float32, mode="r", shape=(rows,))
                )
            self._mapped_rows = rows
        if count == 0 or self._mapped is None:
            empty = np.zeros((0, self.dim), self._np_dtype)
            scales = np.zeros(0, np.float32) if self.dtype == "int8" else None
            return VectorView(0, self.dim, self.dtype, empty, scales)
        scales_view = None if self._mapped_scales is None else self._mapped_scales[:count]
        return VectorView(count, self.dim, self.dtype, self._mapped[:count], scales_view)
