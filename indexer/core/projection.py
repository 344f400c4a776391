"""Seeded two-sided Rademacher projections, one pair per tracked layer (docs/method.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def layer_seed(base_seed: int, layer_name: str) -> int:
    """A 63-bit seed derived from the build seed and the layer's name.

    Hashing the name (rather than enumerating layers) keeps a layer's projection
    stable when other layers are added to or removed from the tracked set.
    """
    digest = hashlib.sha256(f"{base_seed}:{layer_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rademacher(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A (rows, cols) matrix of ±1/sqrt(cols) drawn from a CPU generator (device independent)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    signs = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int8)
    return (signs.to(torch.float32) * 2 - 1) / cols**0.5


@dataclass(frozen=True)
class LayerProjection:
    """The projection pair of one layer: G = (X P_in)ᵀ (δY P_out)."""

    name: str
    p_in: torch.Tensor  # (I, d1)
    p_out: torch.Tensor  # (O, d2)
    seed: int

    @property
    def d1(self) -> int:
        return int(self.p_in.shape[1])

    @property
    def d2(self) -> int:
        return int(self.p_out.shape[1])

    @property
    def in_features(self) -> int:
        return int(self.p_in.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.p_out.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> LayerProjection:
        return LayerProjection(
            self.name, self.p_in.to(device, dtype), self.p_out.to(device, dtype), self.seed
        )


def projected_dims(
    in_features: int,
    out_features: int,
    projection_factor: int | None,
    d1: int | None,
    d2: int | None,
) -> tuple[int, int]:
    """d1 = ⌊I/f⌋, d2 = ⌊O/f⌋ unless given explicitly; never more than the layer's width."""
    if d1 is None or d2 is None:
        if projection_factor is None:
            raise ValueError("give either a projection factor or both d1 and d2")
    out_d1 = d1 if d1 is not None else max(1, in_features // projection_factor)  # type: ignore[operator]
    out_d2 = d2 if d2 is not None else max(1, out_features // projection_factor)  # type: ignore[operator]
    return min(out_d1, in_features), min(out_d2, out_features)


def make_projection(
    name: str, in_features: int, out_features: int, d1: int, d2: int, base_seed: int
) -> LayerProjection:
    seed = layer_seed(base_seed, name)
    # Two independent streams from one seed: P_in from seed, P_out from seed + 1.
    return LayerProjection(
        name=name,
        p_in=rademacher(in_features, d1, seed),
        p_out=rademacher(out_features, d2, (seed + 1) & ((1 << 63) - 1)),
        seed=seed,
    )
