"""Byte locations and content digests of index datasets, shared by writer, reader and verify."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import xxhash

_BLOCK_BYTES = 64 << 20


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


def _digest_raw(path: Path, raw: RawDataset) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        handle.seek(raw.offset)
        remaining = raw.nbytes
        while remaining > 0:
            chunk = handle.read(min(_BLOCK_BYTES, remaining))
            if not chunk:
                raise ValueError(f"{raw.name}: file ends {remaining} bytes early (truncated)")
            hasher.update(chunk)
            remaining -= len(chunk)
    return hasher.hexdigest()


def _digest_values(dataset: h5py.Dataset) -> str:
    hasher = xxhash.xxh3_128()
    if h5py.check_string_dtype(dataset.dtype) is not None and dataset.dtype.kind == "O":
        for value in dataset.asstr()[...]:
            encoded = value.encode("utf-8")
            hasher.update(len(encoded).to_bytes(8, "little"))
            hasher.update(encoded)
    else:
        hasher.update(np.ascontiguousarray(dataset[...]).tobytes())
    return hasher.hexdigest()


def dataset_digests(path: Path, names: Sequence[str]) -> dict[str, str]:
    """xxh3-128 hex digest of each named dataset's values."""
    raws = raw_datasets(path)
    digests = {name: _digest_raw(path, raws[name]) for name in names if name in raws}
    with h5py.File(path, "r") as f:
        for name in names:
            if name not in digests:
                if name not in f:
                    raise KeyError(f"dataset {name} is missing")
                digests[name] = _digest_values(f[name])
    return digests
