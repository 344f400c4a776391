"""The query side of the math, shared by tests, benchmarks and the server.

query gradients (same hooks and projections as the build) → precondition per layer
(Woodbury) → score row blocks of the index (factored kernel, optional low-rank query, or
dense). Tokenizing the query lives in ``indexer.inputs.tokens``; this module sees token ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lorif_serve.errors import ConfigError
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.core.kronecker import AnyCurvature
from lorif_serve.indexer.core.scoring import (
    QueryFactors,
    factor_query,
    score_dense,
    score_factored,
    score_factored_lowrank,
    truncate_query,
)

Encoded = tuple[list[int], int]  # token ids, index where the completion (the loss) starts


def token_budget_groups(lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """Positions grouped so that each group's padded size (count × longest) ≤ ``budget``.

    Sorted by length first, so similar lengths share a pass and little is padding. A query
    longer than the budget on its own forms a group of one. ``None``: one group.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if budget is None:
        return [order] if order else []
    groups: list[list[int]] = []
    for i in order:  # ascending: the newest member is the group's longest
        if groups and (len(groups[-1]) + 1) * lengths[i] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def query_gradients(
    capture: ProjectedGradients,
    encoded: Sequence[Encoded],
    device: torch.device,
    max_batch_tokens: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Projected gradients {layer: (B, d1, d2)} and losses (B,) of encoded queries.

    Memory grows with the padded tokens of one forward/backward, so the batch is featurized
    in passes of at most ``max_batch_tokens`` padded tokens; each query's gradient does not
    depend on which pass it lands in (padding contributes nothing).
    """
    groups = token_budget_groups([len(ids) for ids, _ in encoded], max_batch_tokens)
    grads: dict[str, torch.Tensor] = {}
    losses: torch.Tensor | None = None
    for group in groups:
        part = [encoded[i] for i in group]
        batch = collate([ids for ids, _ in part], [start for _, start in part]).to(device)
        got, loss = capture(batch)
        rows = torch.tensor(group, device=loss.device)
        if losses is None:
            losses = loss.new_empty(len(encoded))
            grads = {name: g.new_empty((len(encoded), *g.shape[1:])) for name, g in got.items()}
        losses[rows] = loss
        for name, g in got.items():
            grads[name][rows] = g
    if losses is None:
        raise ConfigError("no queries to featurize")
    return grads, losses


def precondition(
    specs: Sequence[LayerSpec],
    curvatures: Mapping[str, AnyCurvature],
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
        flat = g.reshape(g.shape[0], -1).to(curvature.eigvals.dtype)
        out[spec.name] = curvature.precondition(flat).reshape(g.shape[0], spec.d1, spec.d2)
    return out


class ScanQuery:
    """Everything the scan needs per layer: the dense Hq and, for a low-rank scan, its factors.

    Args:
        hq: layer → (B, d1, d2) preconditioned queries.
        energy: keep this fraction of each Hq's energy (Σ s²); ``None`` with ``rank`` unset
            means the exact dense scan.
        rank: or keep a fixed query rank q.

    The SVD runs once, here; ``to`` moves the result without recomputing it.
    """

    hq: dict[str, torch.Tensor]
    factored: dict[str, QueryFactors] | None  # None: exact scan with the dense Hq
    energy_kept: dict[str, torch.Tensor]  # layer → (B,) fraction of Σ s² kept

    def __init__(
        self,
        hq: Mapping[str, torch.Tensor],
        energy: float | None = None,
        rank: int | None = None,
    ) -> None:
        self.hq = dict(hq)
        self.factored = None
        self.energy_kept = {}
        if energy is not None or rank is not None:
            self.factored = {
                name: factor_query(h, energy=energy, rank=rank) for name, h in self.hq.items()
            }
            self.energy_kept = {name: f.energy_kept for name, f in self.factored.items()}

    @property
    def batch(self) -> int:
        return int(next(iter(self.hq.values())).shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ScanQuery:
        """The same query on ``device`` in ``dtype`` (factors are converted, not recomputed)."""
        moved = ScanQuery({name: h.to(device, dtype) for name, h in self.hq.items()})
        if self.factored is not None:
            moved.factored = {name: f.to(device, dtype) for name, f in self.factored.items()}
            moved.energy_kept = dict(self.energy_kept)
        return moved


def score_block(
    layout: RowLayout,
    block: torch.Tensor,
    query: ScanQuery,
    layer_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, n) scores of one (n, F) block of stored rows, summed over the query's layers.

    The query must already be in the block's dtype and on its device (``ScanQuery.to``).
    ``layer_scales`` (n, layers) multiplies each layer's scores: int8 rows are scored as
    their integer codes and scaled here (``RowCodec.codes_into``).
    """
    total: torch.Tensor | None = None
    for index, spec in enumerate(layout.layers):
        if spec.name not in query.hq:
            continue
        part = _score_layer(layout, spec, block, query)
        if layer_scales is not None:
            part = part * layer_scales[:, index]
        total = part if total is None else total + part
    if total is None:
        raise ConfigError("the query names no layer of this index")
    return total


def _score_layer(
    layout: RowLayout, spec: LayerSpec, block: torch.Tensor, query: ScanQuery
) -> torch.Tensor:
    hq = query.hq[spec.name].to(block.dtype)
    if spec.dense:
        return score_dense(layout.columns(spec, block), hq.reshape(hq.shape[0], -1))
    left, right = layout.factors(spec, block)
    if query.factored is not None:
        return score_factored_lowrank(left, right, query.factored[spec.name].to(None, block.dtype))
    return score_factored(left, right, hq)
