"""Curvature sums that ride along the factor pass, and their checkpoints.

A curvature that needs the *dense* projected gradients (Kronecker moments, the Nyström
sketch) cannot be fitted from the stored rank-c factors afterwards; it sees every batch in
the factor pass (``observe``), is checkpointed with every flushed row block (the previous
checkpoint stays for a crash between writing one and journaling it) and turns into each
layer's curvature at the end (``curvatures``, summed across ranks first when sharded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from lorif_serve.indexer.build.journal import atomic_write_arrays, read_arrays
from lorif_serve.indexer.build.plan import BuildPlan
from lorif_serve.indexer.core.kronecker import AnyCurvature
from lorif_serve.indexer.core.nystrom import NystromSketch


class GradientSums(Protocol):
    def observe(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add a batch's dense gradients; return what the factor pass should store."""
        ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, arrays: dict[str, np.ndarray]) -> None: ...

    def curvatures(self) -> Sequence[AnyCurvature]: ...


def save_sums(plan: BuildPlan, sums: GradientSums, rows: int) -> None:
    plan.state_dir.mkdir(exist_ok=True)
    atomic_write_arrays(plan.state_dir / f"sums-{rows}.npz", sums.state())


def load_sums(plan: BuildPlan, sums: GradientSums, rows: int) -> None:
    sums.load_state(read_arrays(plan.state_dir / f"sums-{rows}.npz"))


def forget_sums_before(plan: BuildPlan, rows: int) -> None:
    for stale in plan.state_dir.glob("sums-*.npz"):
        if int(stale.stem.split("-")[1]) < rows:
            stale.unlink(missing_ok=True)


class NystromSums:
    """``--curvature gradients``: the Woodbury subspace sketched from the dense gradients."""

    def __init__(self, plan: BuildPlan) -> None:
        self.plan = plan
        config = plan.config
        self.sketches = [
            NystromSketch(s.dim, rank, config.oversample, seed=config.seed + i)
            for i, (s, rank) in enumerate(zip(plan.specs, plan.curvature_ranks, strict=True))
        ]

    def observe(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for spec, sketch in zip(self.plan.specs, self.sketches, strict=True):
            g = grads[spec.name]
            sketch.accumulate(g.reshape(g.shape[0], -1))
        return grads

    def state(self) -> dict[str, np.ndarray]:
        arrays = {f"{i}/sketch": s.sketch.numpy() for i, s in enumerate(self.sketches)}
        arrays["traces"] = np.array([s.trace for s in self.sketches], dtype=np.float64)
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for i, sketch in enumerate(self.sketches):
            sketch.sketch = torch.from_numpy(arrays[f"{i}/sketch"])
            sketch.trace = float(arrays["traces"][i])

    def curvatures(self) -> list[AnyCurvature]:
        out: list[AnyCurvature] = []
        for sketch in self.sketches:
            if self.plan.dist is not None:
                sketch.reduce(self.plan.dist.all_reduce)
            out.append(sketch.result(self.plan.config.damping))
        return out
