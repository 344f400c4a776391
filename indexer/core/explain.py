"""Scores split over tokens and layers, for explanations (docs/server.md, "Explanations").

A training example's projected gradient of layer l is a sum over its token positions s,
G_l = Σ_s (x_s P_in)ᵀ(δ_s P_out), so its score against a preconditioned query Hq splits
exactly into per-token parts  part_s = Σ_l (x_s P_in) D_l (δ_s P_out)ᵀ, where D_l is Hq_l
carried back from the space the rows are stored in (identity, or the whitening W_A · W_S of
a whitened layer: ⟨Hq, W_A G W_S⟩ = ⟨W_A Hq W_S, G⟩ as W_A, W_S are symmetric). The parts
sum to the dense score, before the rank-c truncation and the storage rounding of the rows.

The query side splits by linearity of H⁻¹: the loss is a sum over completion tokens, so the
query gradient is Σ_t g_t, and each g_t is the gradient of the sequence cut after token t
with the loss on t alone (causal models: later tokens change nothing before them).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lorif_serve.indexer.core.gradients import ProjectedGradients, TokenBatch
from lorif_serve.indexer.core.kronecker import AnyCurvature, KroneckerCurvature

Encoded = tuple[list[int], int]  # token ids, index where the loss starts


def stored_space_adjoint(curvature: AnyCurvature, hq: torch.Tensor) -> torch.Tensor:
    """D with ⟨Hq, stored(G)⟩ = ⟨D, G⟩ for the dense projected gradient G; hq (…, d1, d2)."""
    if isinstance(curvature, KroneckerCurvature) and curvature.whitened:
        flat = hq.reshape(-1, *hq.shape[-2:])
        return curvature.whiten(flat).reshape(hq.shape)
    return hq


def token_parts(
    capture: ProjectedGradients,
    batch: TokenBatch,
    directions: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Per-token parts (B, T) of each sequence's score ⟨D, G⟩ over the layers in
    ``directions`` (layer → D (d1, d2), the same for every sequence), with the projected
    gradients {layer: (B, d1, d2)} and losses (B,) of the same pass."""
    parts: torch.Tensor | None = None

    def observe(name: str, inputs: torch.Tensor, output_grads: torch.Tensor) -> None:
        nonlocal parts
        if name not in directions:
            return
        direction = directions[name].to(inputs.dtype)
        part = torch.einsum("btd,de,bte->bt", inputs, direction, output_grads.to(inputs.dtype))
        parts = part if parts is None else parts + part

    grads, losses = capture(batch, observe)
    if parts is None:
        raise ValueError("no layer of the directions is tracked")
    return parts.detach(), grads, losses


def per_token_queries(encoded: Encoded, limit: int) -> tuple[list[Encoded], bool]:
    """One sequence per scored token t (cut after t, loss on t alone), for the first
    ``limit`` scored tokens; and whether the completion had more."""
    ids, start = encoded
    stop = min(len(ids), start + limit)
    return [(ids[: t + 1], t) for t in range(start, stop)], len(ids) > stop
