"""Per-layer curvature: streaming randomized eigendecomposition of 𝒢ᵀ𝒢, damping, Woodbury.

The solver never holds 𝒢 (N×D). Each pass streams the stored rows once and accumulates
𝒢ᵀ(𝒢Q) (D×k, k = r + p); between passes Q is re-orthonormalized; a last Rayleigh–Ritz
pass and a k×k eigh give the top-r eigenpairs (docs/method.md). The accumulator is exposed so
a distributed build can all-reduce it between ``accumulate`` and ``finish_pass``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lorif_serve.errors import ConfigError

DAMPING_RULES = ("trace", "paper")
CURVATURE_KINDS = ("factors", "gradients", "kfac", "ekfac")


def parse_damping(rule: str) -> tuple[str, float] | None:
    """``trace`` → ("trace", 0.5), ``trace:K`` → ("trace", K), ``paper`` → ("paper", 0.1)."""
    if rule == "paper":
        return "paper", 0.1
    if rule == "trace":
        return "trace", 0.5
    name, _, factor = rule.partition(":")
    if name != "trace" or not factor:
        return None
    try:
        value = float(factor)
    except ValueError:
        return None
    return ("trace", value) if value > 0 else None


@dataclass
class Curvature:
    """Top-r eigenpairs of 𝒢ᵀ𝒢 for one layer plus its damping λ."""

    eigvecs: torch.Tensor  # (D, r)
    eigvals: torch.Tensor  # (r,)  σ², descending
    damping: float  # λ
    trace: float  # tr(𝒢ᵀ𝒢)

    @property
    def rank(self) -> int:
        """Eigenpairs held (r)."""
        return int(self.eigvals.numel())

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Curvature:
        return Curvature(
            self.eigvecs.to(device, dtype), self.eigvals.to(device, dtype), self.damping, self.trace
        )

    def precondition(self, grads: torch.Tensor) -> torch.Tensor:
        """H⁻¹g for (B, D) rows, H = VΣ²Vᵀ + λI, in the split Woodbury form.

        H⁻¹ = V diag(1/(λ+σ²)) Vᵀ + (I − VVᵀ)/λ. Writing the complement explicitly avoids
        the 1 − σ²/(σ²+λ) cancellation of the textbook form in low precision.
        """
        coords = grads @ self.eigvecs  # (B, r)
        inside = (coords / (self.damping + self.eigvals)) @ self.eigvecs.T
        outside = (grads - coords @ self.eigvecs.T) / self.damping
        return inside + outside


def resolve_damping(rule: str | float, trace: float, dim: int, ritz_values: torch.Tensor) -> float:
    """λ from a rule: ``trace`` = 0.5·tr/D, ``trace:K`` = K·tr/D (K·the mean eigenvalue),
    ``paper`` = 0.1·mean(r+p Ritz values), or a number."""
    parsed = parse_damping(rule) if isinstance(rule, str) else None
    if isinstance(rule, int | float):
        value = float(rule)
    elif parsed is not None and parsed[0] == "trace":
        value = parsed[1] * trace / dim
    elif parsed is not None:
        value = parsed[1] * float(ritz_values.mean())
    else:
        raise ConfigError(
            f"unknown damping rule {rule!r}; use one of {DAMPING_RULES}, trace:K or a number"
        )
    if not value > 0:
        # All-zero gradients (e.g. a layer the loss never reaches) leave no scale to damp with.
        raise ConfigError(f"damping must be positive, got {value} (rule {rule!r}, trace {trace})")
    return value


class RandomizedEigenSolver:
    """Multi-pass randomized eigensolver for one layer, fed one row block at a time.

    Usage per pass: ``accumulate(block)`` for every block, then ``finish_pass()``. After
    ``passes_total`` passes, ``result()`` gives the eigenpairs.

    Args:
        dim: D.
        rank: r (capped at D).
        oversample: p.
        power_iters: q.
        seed: seeds the Gaussian test matrix.
        dtype: accumulation dtype (float64 by default: the accumulator is small).
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        oversample: int = 10,
        power_iters: int = 3,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.dim = dim
        self.rank = min(rank, dim)
        self.width = min(self.rank + oversample, dim)
        self.passes_total = power_iters + 2  # range finding, q power passes, Rayleigh–Ritz
        self.passes_done = 0
        self.trace = 0.0
        self.dtype = dtype
        generator = torch.Generator().manual_seed(seed)
        self.basis = torch.randn(dim, self.width, generator=generator, dtype=dtype)  # Ω, then Q
        self.accumulator = torch.zeros(dim, self.width, dtype=dtype)
        self._ritz: tuple[torch.Tensor, torch.Tensor] | None = None

    def accumulate(self, rows: torch.Tensor) -> None:
        """Add 𝒢_blockᵀ(𝒢_block Q) for a (B, D) block of projected gradients."""
        basis = self.basis.to(rows.device, rows.dtype)
        product = rows.T @ (rows @ basis)
        self.accumulator += product.to("cpu", self.dtype)
        if self.passes_done == 0:
            self.trace += float((rows.to(self.dtype) ** 2).sum())

    def reduce(self, all_reduce: Callable[[torch.Tensor], None]) -> None:
        """Sum this pass's accumulator (and, on the first pass, the trace) across ranks."""
        all_reduce(self.accumulator)
        if self.passes_done == 0:
            trace = torch.tensor([self.trace], dtype=torch.float64)
            all_reduce(trace)
            self.trace = float(trace.item())

    def finish_pass(self) -> None:
        if self.passes_done + 1 < self.passes_total:
            self.basis, _ = torch.linalg.qr(self.accumulator)
        else:
            projected = self.basis.T @ self.accumulator  # Qᵀ A Q (k, k)
            projected = (projected + projected.T) / 2
            values, vectors = torch.linalg.eigh(projected)
            order = torch.argsort(values, descending=True)
            self._ritz = (values[order].clamp_min(0), self.basis @ vectors[:, order])
        self.accumulator.zero_()
        self.passes_done += 1

    @property
    def done(self) -> bool:
        return self.passes_done >= self.passes_total

    def result(self, damping: str | float) -> tuple[Curvature, torch.Tensor]:
        """(Curvature with top-r eigenpairs, all k Ritz values)."""
        if self._ritz is None:
            raise RuntimeError(f"solver finished {self.passes_done}/{self.passes_total} passes")
        values, vectors = self._ritz
        lam = resolve_damping(damping, self.trace, self.dim, values)
        curvature = Curvature(
            vectors[:, : self.rank].contiguous(), values[: self.rank].contiguous(), lam, self.trace
        )
        return curvature, values

    # Checkpointing: the state between passes is (basis, trace, passes_done).
    def state(self) -> dict[str, torch.Tensor]:
        return {
            "basis": self.basis,
            "trace": torch.tensor(self.trace, dtype=torch.float64),
            "passes_done": torch.tensor(self.passes_done),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.passes_done != 0 or int(state["passes_done"]) >= self.passes_total:
            raise ValueError("can only restore an unfinished solver into a fresh one")
        self.basis = state["basis"].to(self.dtype)
        self.trace = float(state["trace"])
        self.passes_done = int(state["passes_done"])
