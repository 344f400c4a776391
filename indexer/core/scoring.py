"""Score kernels shared by the indexer's tests, the benchmarks and the server.

τ(q, i) = Σ_ℓ g_qᵀ H_ℓ⁻¹ g_i. The query is preconditioned once (Hq = H⁻¹g_q reshaped to
d1×d2); each stored example then costs ⟨Hq, L_iᵀR_i⟩_F, computed for a whole batch of
queries with one GEMM per layer per row block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorif_serve.errors import ConfigError
from lorif_serve.indexer.core.factors import RowLayout, dense_from_factors, low_rank_factors


def score_factored(left: torch.Tensor, right: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    """Exact factored scores.

    Args:
        left: (N, c, d1) stored left factors.
        right: (N, c, d2) stored right factors.
        hq: (B, d1, d2) preconditioned queries.

    Returns:
        (B, N) scores Σ_k left_kᵀ Hq right_k.
    """
    n, c, d1 = left.shape
    batch, _, d2 = hq.shape
    # One GEMM: (N·c, d1) @ (d1, B·d2), then a row-wise dot with the right factors.
    mixed = left.reshape(n * c, d1) @ hq.permute(1, 0, 2).reshape(d1, batch * d2)
    mixed = mixed.view(n, c, batch, d2) * right.view(n, c, 1, d2)
    return mixed.sum(dim=(1, 3)).T


@dataclass
class QueryFactors:
    """Hq ≈ Σ_m s_m a_m b_mᵀ, truncated to the rank that keeps the requested energy."""

    scales: torch.Tensor  # (B, q)
    left: torch.Tensor  # (B, q, d1)
    right: torch.Tensor  # (B, q, d2)
    energy_kept: torch.Tensor  # (B,) fraction of Σ s² kept

    def to(self, device: torch.device | str | None, dtype: torch.dtype) -> QueryFactors:
        """Converted copies (``device=None`` keeps the device); a no-op when nothing changes."""
        where = device or self.scales.device
        return QueryFactors(
            self.scales.to(where, dtype),
            self.left.to(where, dtype),
            self.right.to(where, dtype),
            self.energy_kept,
        )


def factor_query(
    hq: torch.Tensor, energy: float | None = None, rank: int | None = None
) -> QueryFactors:
    """SVD of each preconditioned query, cut at a fixed rank or an energy fraction.

    One rank serves the whole batch (the largest any query needs) so the scan stays one GEMM.
    """
    u, s, vh = torch.linalg.svd(hq, full_matrices=False)
    total = (s**2).sum(dim=1).clamp_min(torch.finfo(s.dtype).tiny)
    if rank is None:
        if energy is None or not 0 < energy <= 1:
            raise ConfigError("give a rank or an energy fraction in (0, 1]")
        cumulative = (s**2).cumsum(dim=1) / total[:, None]
        needed = (cumulative < energy - 1e-12).sum(dim=1) + 1
        rank = int(needed.max())
    rank = max(1, min(rank, s.shape[1]))
    kept = (s[:, :rank] ** 2).sum(dim=1) / total
    return QueryFactors(s[:, :rank], u[:, :, :rank].transpose(1, 2), vh[:, :rank, :], kept)


def score_factored_lowrank(
    left: torch.Tensor, right: torch.Tensor, query: QueryFactors
) -> torch.Tensor:
    """Σ_m s_m Σ_k (a_m·L_k)(b_m·R_k): q·c·(d1+d2) FLOPs per example instead of c·d1·d2.

    Returns (B, N); exact when the query keeps its full rank.
    """
    n, c, d1 = left.shape
    batch, q, d2 = query.right.shape
    along_left = left.reshape(n * c, d1) @ query.left.reshape(batch * q, d1).T  # (N·c, B·q)
    along_right = right.reshape(n * c, d2) @ query.right.reshape(batch * q, d2).T
    products = (along_left * along_right).view(n, c, batch, q) * query.scales.view(1, 1, batch, q)
    return products.sum(dim=(1, 3)).T


def score_dense(grads: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    """LoGRA-dense scores: (N, D) stored gradients, (B, D) preconditioned queries → (B, N)."""
    return hq @ grads.T


def truncate_query(grads: torch.Tensor, rank: int) -> torch.Tensor:
    """The paper's option: replace the query gradient (B, d1, d2) by its best rank-c version."""
    left, right = low_rank_factors(grads, rank)
    return dense_from_factors(left, right)


def score_reference(
    layout: RowLayout, block: torch.Tensor, hq: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The naive scorer the fast kernels are tested against: (B, n), one row at a time.

    Every stored row is expanded to its dense projected gradient G_i (per layer) and scored
    as ⟨Hq, G_i⟩_F in float64. Slow on purpose: no batching, no reshaping tricks.
    """
    batch = next(iter(hq.values())).shape[0]
    scores = torch.zeros(batch, block.shape[0], dtype=torch.float64)
    for row in range(block.shape[0]):
        one = block[row : row + 1].to(torch.float64)
        for spec in layout.layers:
            if spec.name not in hq:
                continue
            g = layout.gradients(spec, one).reshape(spec.d1, spec.d2)
            h = hq[spec.name].to(torch.float64).cpu()
            scores[:, row] += (h * g).sum(dim=(1, 2))
    return scores
