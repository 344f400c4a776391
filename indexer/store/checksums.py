"""Content digests (xxh3-128) of index datasets, shared by the writer, verify and manifests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import xxhash

from lorif_serve.errors import IndexFileError
from lorif_serve.indexer.store.raw import RawDataset, raw_datasets

_BLOCK_BYTES = 64 << 20


def _digest_raw(path: Path, raw: RawDataset) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        handle.seek(raw.offset)
        remaining = raw.nbytes
        while remaining > 0:
            chunk = handle.read(min(_BLOCK_BYTES, remaining))
            if not chunk:
                raise IndexFileError(f"{raw.name}: file ends {remaining} bytes early (truncated)")
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
