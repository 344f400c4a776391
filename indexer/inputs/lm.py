"""Loading a causal LM and its tokenizer from local files only, and fingerprinting them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from torch import nn

from lorif_serve.errors import ModelError

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    identity: dict[str, Any]  # name/path, config hash, weights hash, tokenizer hash


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return resolved


def weights_hash(model: nn.Module) -> str:
    """xxh3-128 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    hasher = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        hasher.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return hasher.hexdigest()


def config_hash(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if config is not None else repr(model)
    data = json.loads(text)
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        data.pop(volatile, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def identify(model: nn.Module, tokenizer: Any, source: str) -> dict[str, Any]:
    return {
        "path": source,
        "name": getattr(getattr(model, "config", None), "_name_or_path", "") or Path(source).name,
        "architecture": type(model).__name__,
        "config_hash": config_hash(model),
        "weights_hash": weights_hash(model),
        "tokenizer_hash": tokenizer_hash(tokenizer),
    }


def load_model(path: str | Path, device: str = "auto", precision: str = "float32") -> LoadedModel:
    """A Hugging Face causal LM from a local directory, or from a ``.gguf`` file.

    Nothing is fetched from a model hub: offline mode is forced and only local files are read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = Path(path)
    if not source.exists():
        raise ModelError(f"{source}: no such model directory or file")
    kwargs: dict[str, Any] = {"local_files_only": True}
    directory = source
    if source.is_file():
        if source.suffix != ".gguf":
            raise ModelError(f"{source}: a model file must be .gguf; otherwise give a directory")
        directory, kwargs["gguf_file"] = source.parent, source.name
    elif not (source / "config.json").is_file():
        raise ModelError(f"{source}: not a Hugging Face model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{source}: cannot load model ({exc})") from exc
    model = model.to(device=resolve_device(device), dtype=_DTYPES[precision]).eval()  # type: ignore[call-arg]
    return LoadedModel(model, tokenizer, identify(model, tokenizer, str(source.resolve())))
