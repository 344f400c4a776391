"""Query featurization: the indexer's hooks and projections applied to (prompt, completion)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from lorif_serve.indexer.core.gradients import ProjectedGradients
from lorif_serve.indexer.core.projection import LayerProjection
from lorif_serve.indexer.core.query import Encoded, query_gradients
from lorif_serve.indexer.inputs.tokens import encode_prompt_completion

__all__ = ["Encoded", "Featurizer", "ModelFeaturizer"]


class Featurizer(Protocol):
    """Turns queries into per-layer projected gradients (B, d1, d2) and losses (B,)."""

    def encode(self, prompt: str, completion: str) -> Encoded: ...

    def gradients(
        self, encoded: Sequence[Encoded]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]: ...


class ModelFeaturizer:
    """The real thing: the model, its tokenizer and the index's stored projections."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        projections: Mapping[str, LayerProjection],
        device: torch.device,
    ) -> None:
        self.tokenizer, self.device = tokenizer, device
        self._capture = ProjectedGradients(model, projections)

    def encode(self, prompt: str, completion: str) -> Encoded:
        return encode_prompt_completion(self.tokenizer, prompt, completion)

    def gradients(self, encoded: Sequence[Encoded]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return query_gradients(self._capture, encoded, self.device)
