"""Kronecker-factored curvature in the projected space: K-FAC and EK-FAC (docs/method.md).

For one layer, with projected inputs x̃ = x P_in (d1) and projected output gradients
δ̃ = δ P_out (d2) of every token,

    A = Σ_t x̃ x̃ᵀ  (d1×d1),   S = Σ_t δ̃ δ̃ᵀ  (d2×d2),   A = Q_A diag(a) Q_Aᵀ, S = Q_S diag(s) Q_Sᵀ.

The curvature of the projected gradients is H = (Q_A ⊗ Q_S) diag(Λ) (Q_A ⊗ Q_S)ᵀ + λI with
Λ (d1×d2) either the scaled eigenvalue grid a sᵀ (K-FAC) or the per-entry second moments
Σ_i (Q_Aᵀ G_i Q_S)² of the actual per-example gradients (EK-FAC). Applying H⁻¹ to a query
costs two small matrix products per side; the index stores d1² + d2² + D numbers per layer.

``whitened`` layers store factors of Ĝ = W_A G W_S with W_A = (A + ρ·mean(a) I)^{-1/2} (and the
same for S), close to the best rank-c approximation in the metric the score uses; their
queries are then mapped back with W_A⁻¹ · W_S⁻¹ so that ⟨query, Ĝ_i⟩ = g_qᵀ H⁻¹ g_i exactly.
ρ = √K for damping ``trace:K``: the product of the two damped factors then has the floor
K·tr/D, the score's own damping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

import torch

from lorif_serve.indexer.core.curvature import Curvature, parse_damping

KRONECKER_KINDS = ("kfac", "ekfac")


def whitening_ratio(damping: str | float) -> float:
    """ρ for the whitened metric: √K for ``trace:K`` (``trace`` = 0.5), else √0.1.

    It only chooses which rank-c approximation is stored; scores stay exact for it.
    """
    if isinstance(damping, str):
        parsed = parse_damping(damping)
        if parsed is not None and parsed[0] == "trace":
            return parsed[1] ** 0.5
    return 0.1**0.5


@dataclass
class KroneckerCurvature:
    """H = (Q_A ⊗ Q_S) diag(Λ) (Q_A ⊗ Q_S)ᵀ + λI for one layer."""

    basis_in: torch.Tensor  # Q_A (d1, d1), orthonormal columns
    basis_out: torch.Tensor  # Q_S (d2, d2)
    values_in: torch.Tensor  # a (d1,) eigenvalues of A
    values_out: torch.Tensor  # s (d2,) eigenvalues of S
    eigvals: torch.Tensor  # Λ (d1, d2)
    damping: float  # λ
    trace: float  # tr(𝒢ᵀ𝒢) over the dense projected gradients
    whitened: bool = False  # stored rows are Ĝ = W_A G W_S
    ratio: float = 0.1**0.5  # ρ of the whitened metric
    # W_A, W_S and their inverses: made on first use (whitened layers only), then reused.
    _metric: Whitening | None = field(default=None, init=False, repr=False, compare=False)

    def whitening(self) -> Whitening:
        if self._metric is None:
            self._metric = Whitening.of(
                self.basis_in, self.values_in, self.basis_out, self.values_out, self.ratio
            )
        return self._metric

    @property
    def rank(self) -> int:
        """Eigenvalues held (all D of them: the Kronecker eigenbasis is complete)."""
        return int(self.eigvals.numel())

    def to(self, device: torch.device | str, dtype: torch.dtype) -> KroneckerCurvature:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, dtype)

        return KroneckerCurvature(
            move(self.basis_in),
            move(self.basis_out),
            move(self.values_in),
            move(self.values_out),
            move(self.eigvals),
            self.damping,
            self.trace,
            self.whitened,
            self.ratio,
        )

    def precondition(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, D) query gradients → (B, D) vectors to dot with the stored rows.

        H⁻¹g = Q_A[(Q_Aᵀ G Q_S) ⊘ (Λ + λ)]Q_Sᵀ, followed for whitened layers by W_A⁻¹ · W_S⁻¹.
        """
        d1, d2 = self.eigvals.shape
        g = grads.reshape(-1, d1, d2)
        rotated = self.basis_in.T @ g @ self.basis_out
        out = self.basis_in @ (rotated / (self.eigvals + self.damping)) @ self.basis_out.T
        if self.whitened:
            out = self.whitening().unapply(out)
        return out.reshape(grads.shape[0], d1 * d2)

    def whiten(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, d1, d2) projected gradients → Ĝ = W_A G W_S, what a whitened layer stores."""
        return self.whitening().apply(grads)


@dataclass
class Whitening:
    """The whitened metric of one layer: Ĝ = W_A G W_S, and W_A⁻¹ M W_S⁻¹ back."""

    left: torch.Tensor  # W_A (d1, d1)
    right: torch.Tensor  # W_S (d2, d2)
    left_inverse: torch.Tensor  # W_A⁻¹
    right_inverse: torch.Tensor  # W_S⁻¹

    @classmethod
    def of(
        cls,
        basis_in: torch.Tensor,
        values_in: torch.Tensor,
        basis_out: torch.Tensor,
        values_out: torch.Tensor,
        ratio: float,
    ) -> Whitening:
        return cls(
            whitening(basis_in, values_in, -0.5, ratio),
            whitening(basis_out, values_out, -0.5, ratio),
            whitening(basis_in, values_in, 0.5, ratio),
            whitening(basis_out, values_out, 0.5, ratio),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Whitening:
        return Whitening(
            *(
                m.to(device, dtype)
                for m in (self.left, self.right, self.left_inverse, self.right_inverse)
            )
        )

    def apply(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, d1, d2) → W_A G W_S."""
        return self.left.to(grads.dtype) @ grads @ self.right.to(grads.dtype)

    def unapply(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, d1, d2) → W_A⁻¹ M W_S⁻¹, so that ⟨W_A⁻¹ M W_S⁻¹, W_A G W_S⟩ = ⟨M, G⟩."""
        return self.left_inverse @ queries @ self.right_inverse


def whitening(
    basis: torch.Tensor, values: torch.Tensor, power: float, ratio: float
) -> torch.Tensor:
    """Q diag((v + ρ·mean(v))^power) Qᵀ."""
    damped = values.clamp_min(0) + ratio * values.clamp_min(0).mean()
    damped = damped.clamp_min(torch.finfo(values.dtype).tiny)
    return (basis * damped**power) @ basis.T


class KroneckerStatistics:
    """Accumulates A and S for one layer from projected per-token activations.

    Args:
        d1: input-side projected width.
        d2: output-side projected width.
        dtype: accumulation dtype (float64: the sums are small and must be order-robust).
    """

    def __init__(self, d1: int, d2: int, dtype: torch.dtype = torch.float64) -> None:
        self.cov_in = torch.zeros(d1, d1, dtype=dtype)
        self.cov_out = torch.zeros(d2, d2, dtype=dtype)
        self.tokens = 0

    def accumulate(self, inputs: torch.Tensor, output_grads: torch.Tensor) -> None:
        """Add (..., d1) projected inputs and (..., d2) projected output gradients.

        Padding must already be zero in both (it then adds nothing).
        """
        x = inputs.reshape(-1, inputs.shape[-1]).to(self.cov_in.dtype)
        dy = output_grads.reshape(-1, output_grads.shape[-1]).to(self.cov_out.dtype)
        self.cov_in += (x.T @ x).cpu()
        self.cov_out += (dy.T @ dy).cpu()

    def eigen(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q_A, a, Q_S, s), eigenvalues descending, clamped at 0."""
        values_in, basis_in = _eigh_descending(self.cov_in)
        values_out, basis_out = _eigh_descending(self.cov_out)
        return basis_in, values_in, basis_out, values_out


def _eigh_descending(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    order = torch.argsort(values, descending=True)
    return values[order].clamp_min(0), vectors[:, order]


def eigen_moments(
    grads: torch.Tensor, basis_in: torch.Tensor, basis_out: torch.Tensor
) -> torch.Tensor:
    """Σ_b (Q_Aᵀ G_b Q_S)² for a (B, d1, d2) batch: the EK-FAC eigenvalue sums, (d1, d2)."""
    g = grads.to(basis_in.dtype)
    return ((basis_in.T @ g @ basis_out) ** 2).sum(dim=0)


def kfac_eigvals(values_in: torch.Tensor, values_out: torch.Tensor, trace: float) -> torch.Tensor:
    """K-FAC's Λ = a sᵀ, scaled so that Σ Λ = tr(𝒢ᵀ𝒢).

    A ⊗ S approximates Σ_i vec(G_i)vec(G_i)ᵀ only up to a factor (tokens per example); the
    scale is fixed by the exact trace so that Λ, the damping rule and the scores of different
    layers are on the same footing as EK-FAC's (and the Woodbury subspace's).
    """
    grid = torch.outer(values_in, values_out)
    total = float(grid.sum())
    return grid * (trace / total) if total > 0 else grid


# Either kind: both map (B, D) query gradients to (B, D) vectors scored against stored rows.
AnyCurvature: TypeAlias = Curvature | KroneckerCurvature
