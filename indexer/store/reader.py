"""Reads an index: metadata and small arrays through h5py, factor rows through a memory map."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from lorif_serve.errors import IndexFileError
from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.curvature import Curvature
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.indexer.core.kronecker import AnyCurvature, KroneckerCurvature
from lorif_serve.indexer.core.projection import LayerProjection, make_projection
from lorif_serve.indexer.store import schema
from lorif_serve.indexer.store.checksums import dataset_digests
from lorif_serve.indexer.store.raw import RawDataset, raw_datasets

__all__ = ["ExampleRecord", "IndexFileError", "IndexReader"]


@dataclass(frozen=True)
class ExampleRecord:
    row: int
    id: str
    text: str
    tokens: int
    metadata: dict[str, Any]


class IndexReader:
    """Read-only view of one index file. Never writes to it.

    Args:
        path: the ``.h5`` file.

    Raises:
        IndexFileError: with a message saying what is wrong.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise IndexFileError(f"{self.path}: no such index file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise IndexFileError(
                f"{self.path}: not a readable HDF5 file ({exc}); truncated or corrupt?"
            ) from exc
        try:
            self._check_format()
            self.metadata: dict[str, Any] = json.loads(self._file.attrs[schema.ATTR_METADATA])
            self.layers = [LayerSpec(**spec) for spec in self.metadata["layers"]]
            self.layout = RowLayout(self.layers)
            self._raw = raw_datasets(self.path)
            self.storage_dtype = str(self._file[schema.FACTORS].attrs[schema.ATTR_STORAGE_DTYPE])
            if self.storage_dtype not in schema.STORAGE_DTYPES:
                raise IndexFileError(f"{self.path}: unknown storage dtype {self.storage_dtype!r}")
            self.codec = RowCodec(self.layout, schema.torch_storage_dtype(self.storage_dtype))
            self._check_sizes()
            self._segments = self._factor_segments()
            # A shard of a distributed build knows where its rows sit in the whole index.
            self.row_offset = int(self.metadata.get("shard", {}).get("row_start", 0))
        except IndexFileError:
            self._file.close()
            raise
        except (KeyError, OSError, ValueError) as exc:
            self._file.close()
            raise IndexFileError(f"{self.path}: malformed index ({exc})") from exc

    def _check_format(self) -> None:
        attrs = self._file.attrs
        if attrs.get(schema.ATTR_FORMAT) != schema.FORMAT_NAME:
            raise IndexFileError(f"{self.path}: not a {schema.FORMAT_NAME} file")
        version = int(attrs.get(schema.ATTR_VERSION, -1))
        if version != schema.FORMAT_VERSION:
            raise IndexFileError(
                f"{self.path}: format version {version}, this software reads version "
                f"{schema.FORMAT_VERSION}; rebuild the index"
            )

    def _check_sizes(self) -> None:
        required = schema.required_datasets(len(self.layers), self.curvature_kind)
        missing = [name for name in required if name not in self._file]
        if missing:
            raise IndexFileError(f"{self.path}: missing dataset(s) {missing}")
        factors = self._file[schema.FACTORS]
        if not factors.is_virtual and schema.FACTORS not in self._raw:
            raise IndexFileError(f"{self.path}: the factor dataset is not contiguous")
        if factors.shape[1] != self.codec.width:
            raise IndexFileError(
                f"{self.path}: factor rows have {factors.shape[1]} columns, the layers need "
                f"{self.codec.width} ({self.storage_dtype})"
            )
        size = os.path.getsize(self.path)
        for raw in self._raw.values():
            if raw.offset + raw.nbytes > size:
                raise IndexFileError(
                    f"{self.path}: truncated: {raw.name} needs bytes up to "
                    f"{raw.offset + raw.nbytes}, the file has {size}"
                )

    @property
    def format_version(self) -> int:
        return int(self._file.attrs[schema.ATTR_VERSION])

    def _factor_segments(self) -> list[tuple[int, int, np.ndarray]]:
        """(first row, end row, memory map) per file holding factor rows.

        A manifest's factor dataset is virtual: its rows live in shard files, mapped here
        directly (HDF5 would silently read a missing shard as zeros, so each is checked).
        """
        factors = self._file[schema.FACTORS]
        if not factors.is_virtual:
            return [(0, factors.shape[0], self._raw[schema.FACTORS].memmap(self.path))]
        segments = []
        for source in factors.virtual_sources():
            (first, _), (last, _) = source.vspace.get_select_bounds()
            shard = self.path.parent / source.file_name
            if not shard.is_file():
                raise IndexFileError(f"{self.path}: shard {shard.name} is missing")
            raw = raw_datasets(shard).get(source.dset_name)
            if raw is None or raw.shape[0] != last - first + 1:
                raise IndexFileError(f"{self.path}: shard {shard.name} does not hold its rows")
            if raw.offset + raw.nbytes > os.path.getsize(shard):
                raise IndexFileError(f"{self.path}: shard {shard.name} is truncated")
            segments.append((int(first), int(last) + 1, raw.memmap(shard)))
        segments.sort(key=lambda segment: segment[0])
        ends = [0] + [end for _, end, _ in segments]
        if [first for first, _, _ in segments] != ends[:-1] or ends[-1] != factors.shape[0]:
            raise IndexFileError(f"{self.path}: shards do not cover rows 0..{factors.shape[0]}")
        return segments

    @property
    def shard_paths(self) -> list[Path]:
        factors = self._file[schema.FACTORS]
        if not factors.is_virtual:
            return []
        return [self.path.parent / source.file_name for source in factors.virtual_sources()]

    # ---- shape -------------------------------------------------------------------------
    @property
    def n_examples(self) -> int:
        return self._segments[-1][1]

    @property
    def factor_dataset(self) -> RawDataset:
        """The contiguous factor dataset of a single-file index (not of a manifest)."""
        return self._raw[schema.FACTORS]

    @property
    def bytes_per_example(self) -> int:
        """Stored bytes per row (int8 rows include their segment scales)."""
        return self.codec.width * schema.STORAGE_DTYPES[self.storage_dtype][0].itemsize

    # ---- bulk data ---------------------------------------------------------------------
    def values(self, start: int, stop: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(stop-start, F) decoded factor values in ``dtype`` (a copy)."""
        return self.codec.decode(self.rows(start, stop), dtype)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """(stop-start, width) stored rows as a zero-copy tensor of the storage dtype.

        Decode them with ``codec`` (or read ``values``) before scoring: int8 rows carry
        their segment scales in the last columns.
        """
        pieces = [
            mapped[max(start, first) - first : min(stop, end) - first]
            for first, end, mapped in self._segments
            if first < stop and start < end
        ]
        if len(pieces) == 1 or stop <= start:
            block = pieces[0] if pieces else self._segments[0][2][0:0]
            return schema.from_storage(block, self.storage_dtype)
        return torch.cat([schema.from_storage(piece, self.storage_dtype) for piece in pieces])

    @property
    def curvature_kind(self) -> str:
        """``factors`` (Woodbury subspace), ``kfac`` or ``ekfac``."""
        return schema.curvature_kind(self.metadata)

    @property
    def factor_metric(self) -> str:
        """``raw`` or ``whitened``: in which metric the stored factors were truncated."""
        return str(self.metadata["config"]["factor_metric"])

    def curvature(self, index: int) -> AnyCurvature:
        """Layer ``index``'s curvature, of the kind the index holds."""
        scalars = [float(v) for v in self._file[schema.curvature_scalars(index)][...]]
        damping, trace = scalars[0], scalars[1]
        if self.curvature_kind in schema.WOODBURY_KINDS:
            return Curvature(
                self._tensor(schema.eigvecs(index)),
                self._tensor(schema.eigvals(index)),
                damping,
                trace,
            )
        whitened = self.factor_metric == "whitened" and not self.layers[index].dense
        return KroneckerCurvature(
            self._tensor(schema.basis_in(index)),
            self._tensor(schema.basis_out(index)),
            self._tensor(schema.values_in(index)),
            self._tensor(schema.values_out(index)),
            self._tensor(schema.grid_eigvals(index)),
            damping,
            trace,
            whitened,
            scalars[2],
        )

    def _tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self._file[name][...])

    def projection(self, index: int) -> LayerProjection:
        group = self._file[schema.layer_group(index)]
        return LayerProjection(
            name=str(group.attrs[schema.ATTR_LAYER_NAME]),
            p_in=torch.from_numpy(self._file[schema.p_in(index)][...]),
            p_out=torch.from_numpy(self._file[schema.p_out(index)][...]),
            seed=int(group.attrs[schema.ATTR_LAYER_SEED]),
        )

    def examples(self, rows: list[int] | np.ndarray) -> list[ExampleRecord]:
        """Id, text, token count and metadata of the given rows (in the given order)."""
        order = np.asarray(rows, dtype=np.int64)
        if order.size and (order.min() < 0 or order.max() >= self.n_examples):
            raise IndexError(f"rows must be in [0, {self.n_examples})")
        unique, inverse = np.unique(order, return_inverse=True)  # h5py wants increasing
        ids = self._file[schema.EXAMPLE_IDS].asstr()[unique]
        texts = self._file[schema.EXAMPLE_TEXT].asstr()[unique]
        tokens = self._file[schema.EXAMPLE_TOKENS][unique]
        metas = self._file[schema.EXAMPLE_METADATA].asstr()[unique]
        return [
            ExampleRecord(int(unique[j]), ids[j], texts[j], int(tokens[j]), json.loads(metas[j]))
            for j in inverse.tolist()
        ]

    def dataset(self, name: str) -> h5py.Dataset:
        """An h5py handle on one dataset (metadata, small arrays, manifests)."""
        return self._file[name]

    def copy_layers_into(self, target: h5py.File) -> None:
        """Copy the per-layer group (projections, curvature) into another file."""
        self._file.copy(self._file[schema.LAYERS_GROUP], target, schema.LAYERS_GROUP)

    def example_ids(self) -> list[str]:
        return list(self._file[schema.EXAMPLE_IDS].asstr()[...])

    # ---- integrity ---------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Full check: checksums of every dataset and reproducible projections. [] = healthy."""
        problems: list[str] = []
        sums = self._file[schema.CHECKSUMS]
        names = json.loads(sums.attrs[schema.ATTR_CHECKSUMMED])
        stored = {name: value.decode() for name, value in zip(names, sums[...], strict=True)}
        try:
            actual = dataset_digests(self.path, names)
        except (KeyError, ValueError, OSError, IndexFileError) as exc:
            return [f"cannot read all datasets: {exc}"]
        problems += [
            f"checksum mismatch in {name}" for name in names if stored[name] != actual[name]
        ]
        for shard in self.shard_paths:
            with IndexReader(shard) as part:
                problems += [f"{shard.name}: {problem}" for problem in part.verify()]
        return problems + self.verify_projections()

    def verify_projections(self) -> list[str]:
        """Each stored projection equals its regeneration from the recorded seed."""
        problems = []
        for index, spec in enumerate(self.layers):
            proj = self.projection(index)
            again = make_projection(
                spec.name,
                spec.in_features,
                spec.out_features,
                spec.d1,
                spec.d2,
                self.metadata["config"]["seed"],
            )
            same = torch.equal(proj.p_in, again.p_in) and torch.equal(proj.p_out, again.p_out)
            if proj.seed != again.seed or not same:
                problems.append(f"projection of {spec.name} does not match its seed")
        return problems

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
