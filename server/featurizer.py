"""Query featurization: the indexer's hooks and projections applied to (prompt, completion)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from lorif_serve.indexer.core.gradients import ProjectedGradients
from lorif_serve.indexer.core.projection import LayerProjection
from lorif_serve.indexer.core.query import Encoded, query_gradients
from lorif_serve.indexer.inputs.tokens import encode_prompt_completion
from lorif_serve.server.device import release_host_memory

# After a pass this large, hand freed activation memory back to the OS: the allocator would
# otherwise keep the peak of the largest query resident for the life of the process.
RELEASE_AFTER_TOKENS = 256

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
        max_batch_tokens: int | None = None,
    ) -> None:
        self.tokenizer, self.device = tokenizer, device
        self.max_batch_tokens = max_batch_tokens
        self._capture = ProjectedGradients(model, projections)

    def encode(self, prompt: str, completion: str) -> Encoded:
        return encode_prompt_completion(self.tokenizer, prompt, completion)

    def gradients(self, encoded: Sequence[Encoded]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        grads, losses = query_gradients(self._capture, encoded, self.device, self.max_batch_tokens)
        if sum(len(ids) for ids, _ in encoded) >= RELEASE_AFTER_TOKENS:
            release_host_memory()
        return grads, losses
