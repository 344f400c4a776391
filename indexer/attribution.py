"""The query side of the math, shared by tests, benchmarks and the server.

featurize (same hooks and projections as the build) → precondition per layer (Woodbury) →
score row blocks of the index (factored kernel, optional low-rank query, or dense).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .curvature import Curvature
from .factors import LayerSpec, RowLayout
from .hooks import ProjectedGradients, collate
from .scoring import (
    factor_query,
    score_dense,
    score_factored,
    score_factored_lowrank,
    truncate_query,
)


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion and where the completion (the loss) starts.

    Prompt and completion are tokenized separately so the boundary never merges into one
    token; the completion's first token needs at least one token of context.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return prompt_ids + completion_ids, max(1, len(prompt_ids))


@dataclass
class QueryGradients:
    grads: dict[str, torch.Tensor]  # layer → (B, d1, d2)
    losses: torch.Tensor  # (B,)
    prompt_tokens: list[int]
    completion_tokens: list[int]


def encoded_gradients(
    capture: ProjectedGradients, encoded: Sequence[tuple[list[int], int]], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Projected gradients of already-encoded (tokens, loss start) queries, in one pass."""
    batch = collate([ids for ids, _ in encoded], [start for _, start in encoded]).to(device)
    return capture(batch)


def featurize(
    capture: ProjectedGradients,
    tokenizer: Any,
    queries: Sequence[tuple[str, str]],
    device: torch.device,
) -> QueryGradients:
    """Projected query gradients: loss over completion tokens only, prompt as context."""
    encoded = [encode_prompt_completion(tokenizer, p, c) for p, c in queries]
    grads, losses = encoded_gradients(capture, encoded, device)
    return QueryGradients(
        grads, losses, [start for _, start in encoded], [len(ids) - start for ids, start in encoded]
    )


def precondition(
    specs: Sequence[LayerSpec],
    curvatures: Mapping[str, Curvature],
    grads: Mapping[str, torch.Tensor],
    query_rank: int | None = None,
) -> dict[str, torch.Tensor]:
    """Hq = H⁻¹g per layer, (B, d1, d2). ``query_rank`` truncates g to rank c first (paper)."""
    out = {}
    for spec in specs:
        g = grads[spec.name]
        if query_rank is not None:
            g = truncate_query(g, min(query_rank, spec.d1, spec.d2))
        curvature = curvatures[spec.name]
        flat = g.reshape(g.shape[0], -1).to(curvature.eigvecs.dtype)
        out[spec.name] = curvature.precondition(flat).reshape(g.shape[0], spec.d1, spec.d2)
    return out


@dataclass
class ScanQuery:
    """Everything the scan needs per layer: the dense Hq, or its low-rank factors."""

    hq: dict[str, torch.Tensor]
    energy: float | None = None  # keep this fraction of each Hq's energy (None = exact)
    rank: int | None = None  # or a fixed query rank

    def __post_init__(self) -> None:
        self.factored = None
        self.energy_kept: dict[str, torch.Tensor] = {}
        if self.energy is not None or self.rank is not None:
            self.factored = {}
            for name, hq in self.hq.items():
                factors = factor_query(hq, energy=self.energy, rank=self.rank)
                self.factored[name] = factors
                self.energy_kept[name] = factors.energy_kept


def score_block(layout: RowLayout, block: torch.Tensor, query: ScanQuery) -> torch.Tensor:
    """(B, n) scores of one (n, F) block of stored rows, summed over the query's layers."""
    total: torch.Tensor | None = None
    for spec in layout.layers:
        if spec.name not in query.hq:
            continue
        hq = query.hq[spec.name].to(block.dtype)
        if spec.dense:
            part = score_dense(layout.columns(spec, block), hq.reshape(hq.shape[0], -1))
        else:
            left, right = layout.factors(spec, block)
            if query.factored is not None:
                factors = query.factored[spec.name]
                factors = type(factors)(
                    *(
                        t.to(block.dtype)
                        for t in (factors.scales, factors.left, factors.right, factors.energy_kept)
                    )
                )
                part = score_factored_lowrank(left, right, factors)
            else:
                part = score_factored(left, right, hq)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("the query names no layer of this index")
    return total
