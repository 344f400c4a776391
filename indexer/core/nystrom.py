"""One-pass Nyström sketch of 𝒢ᵀ𝒢 from dense gradient rows (``--curvature gradients``).

While the factor pass holds each example's dense projected gradient g_i, the sketch
accumulates Y = Σ_i g_i (g_iᵀ Ω) for a fixed orthonormal test matrix Ω (D×k, k = r + p) and
tr(𝒢ᵀ𝒢). At the end, the stabilized (shifted) Nyström approximation of Tropp, Yurtsever,
Udell and Cevher (2017) turns Y into the top-r eigenpairs: with ν a tiny shift,
Y_ν = Y + νΩ, C = chol(Ωᵀ Y_ν), B = Y_ν C⁻ᵀ, B = U Σ Vᵀ, eigenvalues max(Σ² − ν, 0) with
eigenvectors U. It is exact when 𝒢ᵀ𝒢 has rank ≤ k. No pass over the stored rows is needed,
and the curvature models the dense gradients rather than their rank-c factors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lorif_serve.indexer.core.curvature import Curvature, resolve_damping


class NystromSketch:
    """Streaming sketch for one layer.

    Args:
        dim: D.
        rank: r (capped at D).
        oversample: p.
        seed: seeds the test matrix.
        dtype: accumulation dtype.
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        oversample: int = 10,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.dim, self.rank = dim, min(rank, dim)
        width = min(self.rank + oversample, dim)
        generator = torch.Generator().manual_seed(seed)
        gaussian = torch.randn(dim, width, generator=generator, dtype=dtype)
        self.test, _ = torch.linalg.qr(gaussian)  # Ω (D, k), orthonormal columns
        self.sketch = torch.zeros(dim, width, dtype=dtype)  # Y
        self.trace = 0.0

    def accumulate(self, rows: torch.Tensor) -> None:
        """Add a (B, D) block of dense gradients.

        The product is taken in the sketch's dtype: float32 rounding would leave Ωᵀ Y
        indefinite by far more than the shift that makes it positive definite.
        """
        wide = rows.to(self.sketch.dtype)
        test = self.test.to(wide.device)
        self.sketch += (wide.T @ (wide @ test)).cpu()
        self.trace += float((wide**2).sum())

    def reduce(self, all_reduce: Callable[[torch.Tensor], None]) -> None:
        """Sum the sketch and the trace across ranks."""
        all_reduce(self.sketch)
        trace = torch.tensor([self.trace], dtype=torch.float64)
        all_reduce(trace)
        self.trace = float(trace.item())

    def eigenpairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All k approximate eigenpairs (values descending, vectors (D, k))."""
        scale = float(torch.linalg.matrix_norm(self.sketch, ord=2))
        if scale == 0.0:
            width = self.test.shape[1]
            return torch.zeros(width, dtype=self.sketch.dtype), self.test.clone()
        shift = torch.finfo(self.sketch.dtype).eps * self.dim * scale
        for _ in range(8):  # rounding can still leave the core indefinite: shift harder
            shifted = self.sketch + shift * self.test
            core = self.test.T @ shifted
            lower, info = torch.linalg.cholesky_ex((core + core.T) / 2)
            if int(info) == 0:
                break
            shift *= 100
        else:
            raise ValueError("the Nyström core stayed indefinite; the sketch is corrupt")
        factor = torch.linalg.solve_triangular(lower, shifted.T, upper=False).T  # Y_ν C⁻ᵀ
        vectors, singular, _ = torch.linalg.svd(factor, full_matrices=False)
        return (singular**2 - shift).clamp_min(0), vectors

    def result(self, damping: str | float) -> Curvature:
        """The top-r eigenpairs with the damping the rule gives."""
        values, vectors = self.eigenpairs()
        lam = resolve_damping(damping, self.trace, self.dim, values)
        return Curvature(
            vectors[:, : self.rank].contiguous(), values[: self.rank].contiguous(), lam, self.trace
        )
