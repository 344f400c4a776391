"""Disk space: what a build needs, checked before writing, and what a full disk looks like."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lorif_serve.errors import BuildError
from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.indexer.core.kronecker import KRONECKER_KINDS
from lorif_serve.indexer.store import schema

if TYPE_CHECKING:
    from lorif_serve.indexer.build.config import IndexConfig
    from lorif_serve.indexer.inputs.examples import Example


def required_bytes(
    examples: Sequence[Example],
    specs: Sequence[LayerSpec],
    curvature_ranks: Sequence[int],
    config: IndexConfig,
) -> int:
    """Disk a build needs: the file, solver checkpoints, headroom for HDF5 metadata."""
    itemsize = schema.STORAGE_DTYPES[config.dtype][0].itemsize
    codec = RowCodec(RowLayout(specs), schema.torch_storage_dtype(config.dtype))
    factors = len(examples) * codec.width * itemsize
    pairs = list(zip(specs, curvature_ranks, strict=True))
    if config.curvature in KRONECKER_KINDS:
        # Q_A, Q_S, a, s, Λ in the file; A, S and the moment sums (float64) as checkpoints.
        curvature = sum((s.d1**2 + s.d2**2 + s.d1 + s.d2 + s.dim) * 4 for s in specs)
        checkpoints = 3 * sum((s.d1**2 + s.d2**2 + s.dim) * 8 for s in specs)
    else:
        curvature = sum(s.dim * r * 4 for s, r in pairs)
        checkpoints = 2 * sum(s.dim * (r + config.oversample) * 8 for s, r in pairs)
    projections = sum((s.in_features * s.d1 + s.out_features * s.d2) * 4 for s in specs)
    text = sum(len(e.text.encode()) + len(e.id) + 64 for e in examples)
    return factors + curvature + projections + 2 * text + checkpoints + (1 << 20)


def check_output(out: Path) -> None:
    """Refuse, before anything is loaded, an output whose directory is missing or read-only."""
    folder = out.parent
    if not folder.is_dir():
        raise BuildError(f"output directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise BuildError(f"cannot write {out.name}.partial in {folder}: permission denied")


def check_space(partial: Path, needed_total: int) -> None:
    """Fail before writing (HDF5 does not fail cleanly on a full disk) or resuming."""
    allocated = partial.stat().st_blocks * 512 if partial.exists() else 0
    needed = needed_total - allocated
    free = shutil.disk_usage(partial.parent).free
    if needed > free:
        raise BuildError(
            f"not enough disk space in {partial.parent}: the build needs about "
            f"{needed / 2**20:,.1f} MiB more, {free / 2**20:,.1f} MiB are free. Nothing was "
            "lost: free space and rerun the same command."
        )


def disk_full(exc: OSError) -> bool:
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc)  # HDF5 reports write failures without an errno
    return "No space left" in text or "File too large" in text or "Disk quota" in text
