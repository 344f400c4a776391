"""A deterministic featurizer so API tests need no model forward pass."""

from __future__ import annotations

import hashlib
import threading
import time

import torch

from lorif_serve.indexer.core.factors import LayerSpec


class FakeFeaturizer:
    """Tokens are the UTF-8 bytes; each layer's gradient is drawn from a seed hashing them.

    Same query, same gradient, whatever batch it lands in. ``delay`` slows every call,
    ``token_delay`` adds seconds per token (as a real model's forward/backward does) and
    ``gate`` (when cleared) blocks it, to fill queues and trigger timeouts.
    """

    def __init__(self, specs: list[LayerSpec], delay: float = 0.0) -> None:
        self.specs, self.delay = specs, delay
        self.token_delay = 0.0
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def encode(self, prompt: str, completion: str) -> tuple[list[int], int]:
        prompt_ids = list(prompt.encode())
        return prompt_ids + list(completion.encode()), max(1, len(prompt_ids))

    def query_gradients(self, tokens: list[int], start: int) -> dict[str, torch.Tensor]:
        digest = hashlib.sha256(repr((tokens, start)).encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
        return {s.name: torch.randn(s.d1, s.d2, generator=gen) for s in self.specs}

    def gradients(self, encoded):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(len(encoded))
        self.gate.wait(30)
        if self.delay or self.token_delay:
            time.sleep(self.delay + self.token_delay * sum(len(t) for t, _ in encoded))
        per_query = [self.query_gradients(tokens, start) for tokens, start in encoded]
        grads = {s.name: torch.stack([q[s.name] for q in per_query]) for s in self.specs}
        return grads, torch.tensor([float(len(tokens)) for tokens, _ in encoded])
