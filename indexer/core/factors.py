"""Rank-c factors of projected gradients and the packed per-example row.

The math is in docs/method.md, the row layout in docs/index-format.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LayerSpec:
    """Everything the index records about one tracked layer.

    ``rank`` is the number of stored components c; ``dense`` layers store G itself
    (the LoGRA-dense baseline) and ignore ``rank``.
    """

    name: str
    in_features: int
    out_features: int
    d1: int
    d2: int
    rank: int
    dense: bool = False

    @property
    def dim(self) -> int:
        """D = d1·d2, the size of a projected gradient."""
        return self.d1 * self.d2

    @property
    def row_width(self) -> int:
        """Numbers stored per example for this layer."""
        return self.dim if self.dense else self.rank * (self.d1 + self.d2)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def low_rank_factors(grads: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-c approximation G ≈ Lᵀ R with singular values folded into L.

    Args:
        grads: (B, d1, d2) projected gradients.
        rank: c ≤ min(d1, d2).

    Returns:
        left (B, c, d1) and right (B, c, d2); component k is ``left[:, k]`` ⊗ ``right[:, k]``.
        Signs are fixed (the largest-magnitude entry of each right vector is positive) so the
        stored bits do not depend on the SVD backend's sign choice.
    """
    u, s, vh = torch.linalg.svd(grads, full_matrices=False)
    left = (u[:, :, :rank] * s[:, None, :rank]).transpose(1, 2)  # (B, c, d1)
    right = vh[:, :rank, :]  # (B, c, d2)
    pivot = right.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(right, -1, pivot))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return left * sign, right * sign


def dense_from_factors(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(B, c, d1), (B, c, d2) → (B, d1, d2) = Σ_k left_k ⊗ right_k."""
    return left.transpose(1, 2) @ right


class RowLayout:
    """Column map of the packed (N, F) factor matrix: per layer [L (c·d1) | R (c·d2)] or [G (D)]."""

    def __init__(self, layers: Sequence[LayerSpec]) -> None:
        self.layers = list(layers)
        self.offsets: dict[str, int] = {}
        offset = 0
        for spec in self.layers:
            self.offsets[spec.name] = offset
            offset += spec.row_width
        self.width = offset

    def pack(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{layer: (B, d1, d2)} → (B, F) rows, factorized where the layer is not dense."""
        parts = []
        for spec in self.layers:
            g = grads[spec.name]
            if spec.dense:
                parts.append(g.reshape(g.shape[0], -1))
            else:
                left, right = low_rank_factors(g, spec.rank)
                parts += [left.reshape(g.shape[0], -1), right.reshape(g.shape[0], -1)]
        return torch.cat(parts, dim=1)

    def columns(self, spec: LayerSpec, block: torch.Tensor) -> torch.Tensor:
        start = self.offsets[spec.name]
        return block[:, start : start + spec.row_width]

    def factors(self, spec: LayerSpec, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (B, c, d1), (B, c, d2) of one layer's factors inside a (B, F) block."""
        if spec.dense:
            raise ValueError(f"layer {spec.name} is stored dense")
        cols = self.columns(spec, block)
        split = spec.rank * spec.d1
        left = cols[:, :split].reshape(-1, spec.rank, spec.d1)
        right = cols[:, split:].reshape(-1, spec.rank, spec.d2)
        return left, right

    def gradients(self, spec: LayerSpec, block: torch.Tensor) -> torch.Tensor:
        """(B, D) flattened projected gradients of one layer (reconstructed if factored)."""
        if spec.dense:
            return self.columns(spec, block)
        left, right = self.factors(spec, block)
        return dense_from_factors(left, right).reshape(block.shape[0], -1)
