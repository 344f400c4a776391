"""Writes an index file crash-safely (docs/index-format.md).

h5py writes only once, when the ``.partial`` file is created: every dataset of fixed size is
allocated up front, contiguous and uncompressed. All later writes (factor rows, curvature,
checksums) go to their byte offsets with ``pwrite``, so a kill at any moment can never
leave the HDF5 structure half-written; completed steps are recorded in a journal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.curvature import Curvature
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.indexer.core.kronecker import AnyCurvature
from lorif_serve.indexer.core.projection import LayerProjection
from lorif_serve.indexer.store import schema
from lorif_serve.indexer.store.checksums import dataset_digests
from lorif_serve.indexer.store.raw import RawDataset, fsync_dir, raw_datasets


def _early_contiguous() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # the byte offset exists from the start
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # do not write N·F zeros we overwrite anyway
    return dcpl


def create_index_file(
    path: Path,
    metadata: dict[str, Any],
    layers: Sequence[LayerSpec],
    projections: Sequence[LayerProjection],
    curvature_ranks: Sequence[int],
    examples: dict[str, Sequence[Any]],
    storage_dtype: str,
    curvature_kind: str = schema.WOODBURY,
) -> None:
    """Create ``path`` with all datasets allocated; examples and projections written now.

    Args:
        curvature_ranks: r per layer (the Woodbury subspace's width; unused for Kronecker).
        examples: columns ``id``, ``text``, ``tokens``, ``metadata`` (dicts), N entries each.
        curvature_kind: ``factors`` (Woodbury subspace) or a Kronecker kind.
    """
    # libver v110 stores attributes over 64 KiB (the metadata of a many-layer model).
    with h5py.File(path, "w", libver=("v110", "latest")) as f:
        f.attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME
        f.attrs[schema.ATTR_VERSION] = schema.FORMAT_VERSION
        f.attrs[schema.ATTR_METADATA] = json.dumps(metadata, sort_keys=True)
        codec = RowCodec(RowLayout(layers), schema.torch_storage_dtype(storage_dtype))
        _create_factors(f, len(examples["id"]), codec.width, storage_dtype)
        _write_examples(f, examples)
        for i, (spec, proj, rank) in enumerate(
            zip(layers, projections, curvature_ranks, strict=True)
        ):
            _create_layer(f, i, spec, proj, rank, curvature_kind)
        names = schema.checksummed_datasets(len(layers), curvature_kind)
        sums = f.create_dataset(
            schema.CHECKSUMS, (len(names),), f"S{schema.CHECKSUM_WIDTH}", dcpl=_early_contiguous()
        )
        sums.attrs[schema.ATTR_CHECKSUMMED] = json.dumps(names)
        f.flush()
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _create_factors(f: h5py.File, n: int, width: int, storage_dtype: str) -> None:
    disk_dtype, _ = schema.STORAGE_DTYPES[storage_dtype]
    factors = f.create_dataset(schema.FACTORS, (n, width), disk_dtype, dcpl=_early_contiguous())
    factors.attrs[schema.ATTR_STORAGE_DTYPE] = storage_dtype


def _write_examples(f: h5py.File, examples: dict[str, Sequence[Any]]) -> None:
    strings = h5py.string_dtype("utf-8")
    columns = schema.EXAMPLE_COLUMNS
    f.create_dataset(columns["id"], data=list(examples["id"]), dtype=strings)
    f.create_dataset(columns["text"], data=list(examples["text"]), dtype=strings)
    f.create_dataset(columns["tokens"], data=np.asarray(examples["tokens"], dtype=np.int32))
    meta = [json.dumps(m, sort_keys=True, ensure_ascii=False) for m in examples["metadata"]]
    f.create_dataset(columns["metadata"], data=meta, dtype=strings)


def _create_layer(
    f: h5py.File, i: int, spec: LayerSpec, proj: LayerProjection, curvature_rank: int, kind: str
) -> None:
    group = f.require_group(schema.layer_group(i))
    group.attrs[schema.ATTR_LAYER_NAME] = spec.name
    group.attrs[schema.ATTR_LAYER_SEED] = str(proj.seed)
    group.attrs[schema.ATTR_PROJECTION_RULE] = schema.PROJECTION_RULE
    f.create_dataset(schema.p_in(i), data=proj.p_in.numpy().astype(np.float32))
    f.create_dataset(schema.p_out(i), data=proj.p_out.numpy().astype(np.float32))
    shapes: dict[str, tuple[int, ...]]
    if kind in schema.WOODBURY_KINDS:
        shapes = {
            schema.eigvecs(i): (spec.dim, curvature_rank),
            schema.eigvals(i): (curvature_rank,),
        }
    else:
        shapes = {
            schema.basis_in(i): (spec.d1, spec.d1),
            schema.basis_out(i): (spec.d2, spec.d2),
            schema.values_in(i): (spec.d1,),
            schema.values_out(i): (spec.d2,),
            schema.grid_eigvals(i): (spec.d1, spec.d2),
        }
    for name, shape in shapes.items():
        f.create_dataset(name, shape, np.float32, dcpl=_early_contiguous())
    scalars = 2 if kind in schema.WOODBURY_KINDS else 3
    f.create_dataset(schema.curvature_scalars(i), (scalars,), np.float64, dcpl=_early_contiguous())


class RawWriter:
    """pwrite access to the preallocated datasets of a ``.partial`` index file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.datasets: dict[str, RawDataset] = raw_datasets(path)
        with h5py.File(path, "r") as f:
            self.storage_dtype = str(f[schema.FACTORS].attrs[schema.ATTR_STORAGE_DTYPE])
            specs = json.loads(f.attrs[schema.ATTR_METADATA])["layers"]
            self.checksummed: list[str] = json.loads(
                f[schema.CHECKSUMS].attrs[schema.ATTR_CHECKSUMMED]
            )
        layout = RowLayout([LayerSpec(**spec) for spec in specs])
        self.codec = RowCodec(layout, schema.torch_storage_dtype(self.storage_dtype))
        self._fd = os.open(path, os.O_RDWR)

    def _write(self, name: str, array: np.ndarray, first_row: int = 0) -> None:
        target = self.datasets[name]
        row_bytes = target.itemsize * int(np.prod(target.shape[1:], dtype=np.int64))
        data = np.ascontiguousarray(array, dtype=target.dtype)
        if data.shape[1:] != target.shape[1:] or first_row + data.shape[0] > target.shape[0]:
            raise ValueError(f"{name}: rows {data.shape} at {first_row} do not fit {target.shape}")
        os.pwrite(self._fd, data.tobytes(), target.offset + first_row * row_bytes)

    def write_rows(self, first_row: int, rows: torch.Tensor) -> None:
        """Store a (B, F) block of packed factor rows starting at ``first_row``."""
        encoded = self.codec.encode(rows)
        self._write(schema.FACTORS, schema.to_storage(encoded, self.storage_dtype), first_row)

    def write_curvature(self, index: int, curvature: AnyCurvature) -> None:
        arrays: dict[str, torch.Tensor]
        scalars = [curvature.damping, curvature.trace]
        if isinstance(curvature, Curvature):
            arrays = {
                schema.eigvecs(index): curvature.eigvecs,
                schema.eigvals(index): curvature.eigvals,
            }
        else:
            scalars.append(curvature.ratio)
            arrays = {
                schema.basis_in(index): curvature.basis_in,
                schema.basis_out(index): curvature.basis_out,
                schema.values_in(index): curvature.values_in,
                schema.values_out(index): curvature.values_out,
                schema.grid_eigvals(index): curvature.eigvals,
            }
        for name, values in arrays.items():
            self._write(name, values.float().cpu().numpy())
        self._write(schema.curvature_scalars(index), np.array(scalars, dtype=np.float64))

    def flush(self) -> None:
        os.fsync(self._fd)

    def finalize(self, final_path: Path) -> None:
        """Checksums, fsync, atomic rename to ``final_path``, fsync of the directory."""
        self.flush()
        digests = dataset_digests(self.path, self.checksummed)
        self._write(schema.CHECKSUMS, np.array([digests[n] for n in self.checksummed], dtype="S32"))
        self.flush()
        self.close()
        os.replace(self.path, final_path)
        fsync_dir(final_path.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
