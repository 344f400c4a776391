"""The Kronecker curvature's share of a build (``curvature`` = ``kfac`` or ``ekfac``).

1. ``fit_bases`` — a pre-pass over an evenly spaced sample of ``covariance_sample`` examples
   (one forward/backward each, like the factor pass) accumulates A and S per layer and
   eigendecomposes them. It is journaled with its result, so a resume never repeats it.
2. ``KroneckerSums`` rides along the factor pass (``indexer.build.sums``): from every
   example's dense projected gradient (before truncation) it sums tr(𝒢ᵀ𝒢) and, for EK-FAC,
   (Q_Aᵀ G Q_S)²; for a whitened index it hands the factor pass Ĝ = W_A G W_S to truncate
   instead of G.
3. ``KroneckerSums.curvatures`` turns the sums into each layer's curvature (summed across
   ranks first in a distributed build).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from lorif_serve.indexer.build.faults import crash_point
from lorif_serve.indexer.build.journal import Journal, atomic_write_arrays, read_arrays
from lorif_serve.indexer.build.plan import BuildPlan
from lorif_serve.indexer.core.curvature import resolve_damping
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.core.kronecker import (
    KroneckerCurvature,
    KroneckerStatistics,
    Whitening,
    eigen_moments,
    kfac_eigvals,
    whitening_ratio,
)

Bases = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # Q_A, a, Q_S, s


def _compute_dtype(plan: BuildPlan) -> torch.dtype:
    """The dtype of the factor pass's gradients (the hooks promote to at least float32)."""
    return torch.float64 if plan.config.precision == "float64" else torch.float32


def sample_rows(n_total: int, size: int) -> list[int]:
    """``size`` evenly spaced global rows (all rows when there are fewer)."""
    if size >= n_total:
        return list(range(n_total))
    return [(i * n_total) // size for i in range(size)]


def fit_bases(plan: BuildPlan, journal: Journal) -> list[Bases]:
    """A and S per layer from the sample, eigendecomposed; loaded if already journaled."""
    path = plan.state_dir / "kronecker-bases.npz"
    if journal.last("kronecker_bases") is None:
        bases = _accumulate_bases(plan)
        plan.state_dir.mkdir(exist_ok=True)
        arrays = {
            f"{i}/{key}": array.numpy()
            for i, layer in enumerate(bases)
            for key, array in zip("AaSs", layer, strict=True)
        }
        atomic_write_arrays(path, arrays)  # float64 round-trips exactly: a resume sees these
        journal.append(event="kronecker_bases")
        crash_point("kronecker-bases")
        return bases
    saved = read_arrays(path)
    return [
        tuple(torch.from_numpy(saved[f"{i}/{k}"]) for k in "AaSs")  # type: ignore[misc]
        for i in range(len(plan.specs))
    ]


def _accumulate_bases(plan: BuildPlan) -> list[Bases]:
    stats = {s.name: KroneckerStatistics(s.d1, s.d2) for s in plan.specs}
    capture = ProjectedGradients(plan.model, {p.name: p for p in plan.projections})
    first, n = plan.first_row, len(plan.examples)
    sample = sample_rows(plan.n_total, plan.config.covariance_sample)
    rows = [r - first for r in sample if first <= r < first + n]  # this shard's share
    size = plan.config.batch_size
    for start in tqdm(
        range(0, len(rows), size),
        desc="kronecker factors",
        unit="batch",
        disable=not plan.progress,
        mininterval=1.0,
    ):
        chunk = [plan.examples[r] for r in rows[start : start + size]]
        batch = collate([e.tokens for e in chunk], [e.loss_start for e in chunk]).to(plan.device)
        capture(batch, observe=lambda name, x, dy: stats[name].accumulate(x, dy))
    if plan.dist is not None:
        for stat in stats.values():
            plan.dist.all_reduce(stat.cov_in)
            plan.dist.all_reduce(stat.cov_out)
    return [stats[s.name].eigen() for s in plan.specs]


class KroneckerSums:
    """Per-layer sums over the dense projected gradients of the factor pass."""

    def __init__(self, plan: BuildPlan, bases: Sequence[Bases]) -> None:
        self.plan = plan
        self.bases = list(bases)
        self.ekfac = plan.config.curvature == "ekfac"
        self.whitened = plan.config.factor_metric == "whitened"
        self.moments = [torch.zeros(s.d1, s.d2, dtype=torch.float64) for s in plan.specs]
        self.traces = torch.zeros(len(plan.specs), dtype=torch.float64)
        # What the factor pass truncates for a whitened index, on its device and dtype.
        ratio = whitening_ratio(plan.config.damping)
        self._whitenings = [
            Whitening.of(basis_in, values_in, basis_out, values_out, ratio).to(
                plan.device, _compute_dtype(plan)
            )
            if self.whitened and not spec.dense
            else None
            for spec, (basis_in, values_in, basis_out, values_out) in zip(
                plan.specs, self.bases, strict=True
            )
        ]

    def observe(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add a batch's dense gradients; return what the factor pass should store."""
        out = dict(grads)
        for i, spec in enumerate(self.plan.specs):
            g = grads[spec.name]
            self.traces[i] += float((g.to(torch.float64) ** 2).sum())
            if self.ekfac:
                basis_in, _, basis_out, _ = self.bases[i]
                moments = eigen_moments(g, basis_in.to(g.device), basis_out.to(g.device))
                self.moments[i] += moments.cpu()
            whitening = self._whitenings[i]
            if whitening is not None:
                out[spec.name] = whitening.apply(g)
        return out

    def state(self) -> dict[str, np.ndarray]:
        arrays = {f"{i}/moments": m.numpy() for i, m in enumerate(self.moments)}
        arrays["traces"] = self.traces.numpy()
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.moments = [torch.from_numpy(arrays[f"{i}/moments"]) for i in range(len(self.bases))]
        self.traces = torch.from_numpy(np.array(arrays["traces"]))

    def curvatures(self) -> list[KroneckerCurvature]:
        """Each layer's curvature from the sums (all ranks' sums in a distributed build)."""
        if self.plan.dist is not None:
            for moments in self.moments:
                self.plan.dist.all_reduce(moments)
            self.plan.dist.all_reduce(self.traces)
        config = self.plan.config
        out = []
        for i, spec in enumerate(self.plan.specs):
            trace = float(self.traces[i])
            basis_in, values_in, basis_out, values_out = self.bases[i]
            grid = self.moments[i] if self.ekfac else kfac_eigvals(values_in, values_out, trace)
            top = grid.flatten().sort(descending=True).values
            kept = top[: config.curvature_rank + config.oversample]
            damping = resolve_damping(config.damping, trace, spec.dim, kept)
            whitened = self._whitenings[i] is not None
            out.append(
                KroneckerCurvature(
                    basis_in,
                    basis_out,
                    values_in,
                    values_out,
                    grid,
                    damping,
                    trace,
                    whitened,
                    whitening_ratio(config.damping),
                )
            )
        return out
