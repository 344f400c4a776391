"""Query featurization: the indexer's hooks and projections applied to (prompt, completion)."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from lorif_serve.indexer.core.gradients import ProjectedGradients
from lorif_serve.indexer.core.projection import LayerProjection
from lorif_serve.indexer.core.query import Encoded, query_gradients
from lorif_serve.indexer.inputs.tokens import encode_prompt_completion
from lorif_serve.server.device import release_host_memory

# After a pass this large, and larger than twice the recent typical pass, hand freed
# activation memory back to the OS: the allocator would otherwise keep the peak of the
# largest query resident for the life of the process. Trimming after every pass of steady
# traffic would make each next pass fault its pages in again (+50 % at 16 × 80 tokens).
RELEASE_AFTER_TOKENS = 256
_RECENT_PASSES = 16

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
        self.capture = ProjectedGradients(model, projections)
        self._recent: deque[int] = deque(maxlen=_RECENT_PASSES)  # tokens of recent passes

    def encode(self, prompt: str, completion: str) -> Encoded:
        return encode_prompt_completion(self.tokenizer, prompt, completion)

    def gradients(self, encoded: Sequence[Encoded]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        grads, losses = query_gradients(self.capture, encoded, self.device, self.max_batch_tokens)
        tokens = sum(len(ids) for ids, _ in encoded)
        typical = statistics.median(self._recent) if self._recent else 0
        self._recent.append(tokens)
        if tokens >= RELEASE_AFTER_TOKENS and tokens > 2 * typical:
            release_host_memory()
        return grads, losses
