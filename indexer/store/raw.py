"""Where a contiguous dataset's bytes are (for memory maps and pwrite), and durable renames."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np


@dataclass(frozen=True)
class RawDataset:
    """A contiguous, uncompressed dataset: where its bytes are and how to view them."""

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    def memmap(self, path: Path, mode: str = "r") -> np.ndarray:
        if self.nbytes == 0:
            return np.zeros(self.shape, self.dtype)
        return np.memmap(path, dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape)  # type: ignore[call-overload]


def raw_datasets(path: Path) -> dict[str, RawDataset]:
    """Every fixed-size, contiguous dataset in the file, by name."""
    found: dict[str, RawDataset] = {}

    def visit(name: str, obj: object) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.is_virtual or obj.chunks is not None:
            return
        if obj.dtype.kind == "O":  # variable-length strings live in the global heap
            return
        offset = obj.id.get_offset()
        if offset is not None:
            found[name] = RawDataset(name, int(offset), tuple(obj.shape), np.dtype(obj.dtype))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry, not just the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
