"""Which linear layers of a causal LM are tracked, and their shapes."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

# GPT-2 style layers: weight is (in, out), the transpose of nn.Linear's.
from transformers.pytorch_utils import Conv1D

from lorif_serve.errors import ConfigError

# A module inside a numbered block ("model.layers.3.mlp.up_proj", "transformer.h.0.attn.c_attn").
_INSIDE_BLOCK = re.compile(r"\.\d+\.")


@dataclass(frozen=True)
class TrackedLayer:
    name: str
    in_features: int
    out_features: int
    kind: str  # "linear" | "conv1d"


def linear_shape(module: nn.Module) -> tuple[int, int, str] | None:
    """(in_features, out_features, kind) for a supported linear module, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, "linear"
    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape  # Conv1D stores (in, out)
        return int(in_features), int(out_features), "conv1d"
    return None


def find_layers(model: nn.Module, patterns: Sequence[str] | None = None) -> list[TrackedLayer]:
    """The tracked layers, in module order.

    Args:
        model: a causal LM.
        patterns: shell-style globs over module names (e.g. ``"*.mlp.*"``). ``None`` selects
            every linear inside the transformer blocks: no embeddings, no LM head.

    Raises:
        ConfigError: when nothing matches, naming the linear layers that exist.
    """
    candidates: list[TrackedLayer] = []
    for name, module in model.named_modules():
        shape = linear_shape(module)
        if shape is not None:
            candidates.append(TrackedLayer(name, *shape))
    if patterns:
        chosen = [
            layer
            for layer in candidates
            if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)
        ]
    else:
        chosen = [layer for layer in candidates if _INSIDE_BLOCK.search(f".{layer.name}.")]
    if not chosen:
        names = ", ".join(layer.name for layer in candidates[:12]) or "none"
        raise ConfigError(f"no linear layer matches {list(patterns or [])}; linear layers: {names}")
    return chosen
