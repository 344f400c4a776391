"""The manifest of a sharded index: one logical index over the shard files.

See docs/index-format.md and docs/scale.md.

Factor and example datasets are HDF5 virtual datasets over the shards (so every HDF5 tool
sees one index); projections and curvature, identical in every shard of a distributed build,
are copied from the first. The reader maps the shards' factor rows directly and checks that
each shard exists, since HDF5 silently reads a missing source as zeros.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from lorif_serve.errors import IndexFileError
from lorif_serve.indexer.store import schema
from lorif_serve.indexer.store.checksums import dataset_digests
from lorif_serve.indexer.store.raw import fsync_dir
from lorif_serve.indexer.store.reader import IndexReader


def write_manifest(out: Path, shards: list[Path]) -> None:
    """Write ``out`` over ``shards`` (complete shard indexes of consecutive row ranges)."""
    readers = [IndexReader(shard) for shard in shards]
    try:
        _check_consecutive(readers)
        partial = schema.partial_path(out)
        with h5py.File(partial, "w", libver=("v110", "latest")) as f:
            f.attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME
            f.attrs[schema.ATTR_VERSION] = schema.FORMAT_VERSION
            f.attrs[schema.ATTR_METADATA] = json.dumps(_metadata(shards, readers), sort_keys=True)
            total = sum(r.n_examples for r in readers)
            for name in schema.ROW_DATASETS:
                _virtual_rows(f, name, total, shards, readers)
            readers[0].copy_layers_into(f)
            names = sorted(_own_datasets(f))
            sums = f.create_dataset(schema.CHECKSUMS, (len(names),), f"S{schema.CHECKSUM_WIDTH}")
            sums.attrs[schema.ATTR_CHECKSUMMED] = json.dumps(names)
        digests = dataset_digests(partial, names)
        with h5py.File(partial, "r+") as f:
            f[schema.CHECKSUMS][...] = np.array([digests[n] for n in names], dtype="S32")
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, out)
        fsync_dir(out.parent)
    finally:
        for reader in readers:
            reader.close()


def _metadata(shards: list[Path], readers: list[IndexReader]) -> dict[str, object]:
    metadata = dict(readers[0].metadata)
    metadata.pop("shard", None)
    metadata["shards"] = [
        {"file": shard.name, "rows": [r.row_offset, r.row_offset + r.n_examples]}
        for shard, r in zip(shards, readers, strict=True)
    ]
    return metadata


def _virtual_rows(
    f: h5py.File, name: str, total: int, shards: list[Path], readers: list[IndexReader]
) -> None:
    first = readers[0].dataset(name)
    layout = h5py.VirtualLayout(shape=(total, *first.shape[1:]), dtype=first.dtype)
    for shard, reader in zip(shards, readers, strict=True):
        source = reader.dataset(name)
        rows = slice(reader.row_offset, reader.row_offset + source.shape[0])
        # Relative names: the manifest and its shards move together.
        layout[rows] = h5py.VirtualSource(shard.name, name, shape=source.shape)
    dataset = f.create_virtual_dataset(name, layout)
    for key, value in first.attrs.items():
        dataset.attrs[key] = value


def _own_datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(
        lambda name, obj: (
            names.append(name) if isinstance(obj, h5py.Dataset) and not obj.is_virtual else None
        )
    )
    return names


def _check_consecutive(readers: list[IndexReader]) -> None:
    expected = 0
    for reader in readers:
        if reader.row_offset != expected:
            raise IndexFileError(
                f"{reader.path}: starts at row {reader.row_offset}, expected {expected}"
            )
        expected += reader.n_examples
