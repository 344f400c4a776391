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

from . import schema
from .curvature import Curvature
from .digest import RawDataset, dataset_digests, raw_datasets
from .factors import LayerSpec, RowLayout
from .projection import LayerProjection, make_projection


class IndexFileError(ValueError):
    """The index file is missing, corrupt, truncated or of another format or version."""


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
            self._check_sizes()
            factors = self._raw[schema.FACTORS]
            self.storage_dtype = str(self._file[schema.FACTORS].attrs[schema.ATTR_STORAGE_DTYPE])
            self._factors = factors.memmap(self.path)
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
        required = [schema.FACTORS, schema.EXAMPLE_IDS, schema.CHECKSUMS]
        missing = [name for name in required if name not in self._file]
        if missing:
            raise IndexFileError(f"{self.path}: missing dataset(s) {missing}")
        factors = self._file[schema.FACTORS]
        if factors.shape[1] != self.layout.width:
            raise IndexFileError(
                f"{self.path}: factor rows have {factors.shape[1]} values, the layers need "
                f"{self.layout.width}"
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

    # ---- shape -------------------------------------------------------------------------
    @property
    def n_examples(self) -> int:
        return int(self._factors.shape[0])

    @property
    def factor_dataset(self) -> RawDataset:
        return self._raw[schema.FACTORS]

    @property
    def bytes_per_example(self) -> int:
        return self.factor_dataset.nbytes // max(1, self.n_examples)

    # ---- bulk data ---------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> torch.Tensor:
        """(stop-start, F) factor rows as a zero-copy tensor of the storage dtype."""
        return schema.from_storage(self._factors[start:stop], self.storage_dtype)

    def curvature(self, index: int) -> Curvature:
        damping, trace = (float(v) for v in self._file[schema.curvature_scalars(index)][...])
        return Curvature(
            torch.from_numpy(self._file[schema.eigvecs(index)][...]),
            torch.from_numpy(self._file[schema.eigvals(index)][...]),
            damping,
            trace,
        )

    def projection(self, index: int) -> LayerProjection:
        group = self._file[schema.layer_group(index)]
        return LayerProjection(
            name=str(group.attrs["name"]),
            p_in=torch.from_numpy(self._file[schema.p_in(index)][...]),
            p_out=torch.from_numpy(self._file[schema.p_out(index)][...]),
            seed=int(group.attrs["seed"]),
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
        except (KeyError, ValueError, OSError) as exc:
            return [f"cannot read all datasets: {exc}"]
        problems += [
            f"checksum mismatch in {name}" for name in names if stored[name] != actual[name]
        ]
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
