"""The int8 queries of the bounded pass and the error term of each (docs/server.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BoundedQuery:
    """The int8 form of the queries for the bounded pass, with each layer's error term."""

    offsets: torch.Tensor  # (layers,) int64 byte offset of a layer's packed H8, -1: float
    packed: torch.Tensor  # (B, bytes) int8, H8 laid (db/4, da rounded up to 16, 4) per layer
    corr_offsets: torch.Tensor  # (layers,) int64 offset of a layer's corrections
    corrections: torch.Tensor  # (B, Σ da) int32, 128·Σ_j H8_ij (the kernel's unsigned b)
    scales: torch.Tensor  # (B, layers) float32 s_H
    eps: torch.Tensor  # (B, layers) float32 bound on |score error| per unit of row norm
    # The tiled pass's corrections: (B, Σ da) int32 −128·Σ_j H8_ij (−1: scored in float).
    neg_offsets: torch.Tensor
    negated: torch.Tensor


_UNIT = 2.0**-24  # float32 unit roundoff


def quantize_queries(meta: torch.Tensor, parts: list[torch.Tensor], layers: int) -> BoundedQuery:
    """Per layer and query: H8 = round(H / s_H), s_H = max|H| / 127, and the error term.

    eps = ‖H − s_H·H8‖₂ (spectral norm, float64) + a float32 rounding term that covers both
    this pass and the exact kernel: 2⁻²³ · (c·(da + db) + (c + 1)·layers + 16) · ‖H‖_F, the
    standard bound on a sum of that depth (a product's lanes, then c·layers partial sums),
    with ‖H‖_F ≥ ‖|H|‖₂. For any row,
    |⟨H, Σ_k a_k b_kᵀ⟩ − ⟨s_H·H8, Σ_k a_k b_kᵀ⟩| ≤ ‖ΔH‖₂ · Σ_k ‖a_k‖‖b_k‖ (Cauchy–Schwarz
    on each component), so eps times the row's Σ_k ‖a_k‖‖b_k‖ bounds the difference
    between the two computed scores. eps is rounded up by 0.1 % for the float32 rounding of
    the bound itself.
    """
    batch = parts[0].shape[0]
    offsets, packed, scales, eps = [], [], [], []
    corr_offsets, corrections = [], []
    neg_offsets, negated = [], []
    position = corr_position = neg_position = 0
    for index in range(layers):
        _, _, c, da, db = (int(v) for v in meta[index, :5])
        h = parts[index].to(torch.float64).reshape(batch, db, da).transpose(1, 2)  # (B, da, db)
        depth = c * (da + db) + (c + 1) * layers + 16
        rounding = 2.0 * _UNIT * depth * torch.linalg.matrix_norm(h)
        integer = db % 4 == 0 and db <= 1024 and c <= 256 and int(meta[index, 1]) >= 0
        if not integer:
            offsets.append(-1)
            corr_offsets.append(-1)
            neg_offsets.append(-1)
            scales.append(torch.ones(batch, dtype=torch.float64))
            eps.append(rounding)
            continue
        scale = (h.abs().amax(dim=(1, 2)) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        scale = scale.to(torch.float32).to(torch.float64)  # the value the kernel multiplies by
        codes = torch.round(h / scale[:, None, None]).clamp_(-127, 127)
        error = torch.linalg.matrix_norm(h - codes * scale[:, None, None], ord=2)
        lanes = -(-da // 16) * 16  # whole 16-lane registers; the lanes past da are zero
        signed = torch.zeros(batch, lanes, db, dtype=torch.int8)
        signed[:, :da] = codes.to(torch.int8)
        layout = signed.reshape(batch, lanes, db // 4, 4).permute(0, 2, 1, 3)
        packed.append(layout.reshape(batch, -1))
        offsets.append(position)
        position += lanes * db
        corrections.append((128 * signed.to(torch.int32).sum(dim=2)).to(torch.int32))
        corr_offsets.append(corr_position)
        corr_position += lanes
        negated.append((-128 * codes.sum(dim=2)).to(torch.int32))
        neg_offsets.append(neg_position)
        neg_position += da
        scales.append(scale)
        eps.append(error + rounding)
    margin = torch.stack(eps, dim=1) * 1.001

    def joined(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(parts, dim=1).contiguous() if parts else torch.zeros(batch, 1, dtype=dtype)

    return BoundedQuery(
        torch.tensor(offsets, dtype=torch.int64),
        joined(packed, torch.int8),
        torch.tensor(corr_offsets, dtype=torch.int64),
        joined(corrections, torch.int32),
        torch.stack(scales, dim=1).to(torch.float32).contiguous(),
        torch.nextafter(
            margin.to(torch.float32), torch.full((1,), float("inf"), dtype=torch.float32)
        ).contiguous(),
        torch.tensor(neg_offsets, dtype=torch.int64),
        joined(negated, torch.int32),
    )
