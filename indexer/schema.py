"""The one place that knows the index file's names, dtypes and format version (SPEC §3)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

FORMAT_NAME = "lorif-index"
FORMAT_VERSION = 1

# Root attributes.
ATTR_FORMAT = "format"
ATTR_VERSION = "format_version"
ATTR_METADATA = "metadata"  # JSON: config, model, tokenizer, dataset, layers, loss, ...
ATTR_STORAGE_DTYPE = "storage_dtype"  # on the factor dataset: "bfloat16" | "float16" | "float32"
ATTR_CHECKSUMMED = "checksummed"  # on the checksum dataset: JSON list of dataset names

# Datasets.
FACTORS = "factors"  # (N, F) packed rows, see indexer.factors.RowLayout
EXAMPLE_IDS = "examples/id"  # (N,) UTF-8
EXAMPLE_TEXT = "examples/text"  # (N,) UTF-8
EXAMPLE_TOKENS = "examples/tokens"  # (N,) int32
EXAMPLE_METADATA = "examples/metadata"  # (N,) UTF-8 JSON object per example
CHECKSUMS = "checksums"  # (len(checksummed),) fixed-length hex digests, xxh3-128
CHECKSUM_WIDTH = 32


def layer_group(index: int) -> str:
    return f"layers/{index:04d}"


def p_in(index: int) -> str:
    return f"{layer_group(index)}/p_in"  # (I, d1) float32


def p_out(index: int) -> str:
    return f"{layer_group(index)}/p_out"  # (O, d2) float32


def eigvecs(index: int) -> str:
    return f"{layer_group(index)}/eigvecs"  # (D, r) float32


def eigvals(index: int) -> str:
    return f"{layer_group(index)}/eigvals"  # (r,) float32


def curvature_scalars(index: int) -> str:
    return f"{layer_group(index)}/curvature_scalars"  # (2,) float64: damping λ, trace


# Storage dtypes: name → (numpy on-disk dtype, torch dtype it stands for).
STORAGE_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),  # HDF5 has no bf16: the raw bit pattern
    "float16": (np.dtype("<f2"), torch.float16),
    "float32": (np.dtype("<f4"), torch.float32),
}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def storage_dtype_name(name: str) -> str:
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {name!r}; use one of {sorted(STORAGE_DTYPES)}")
    return canonical


def to_storage(values: torch.Tensor, dtype_name: str) -> np.ndarray:
    """Round a float tensor to the storage dtype and return its on-disk numpy array."""
    disk_dtype, torch_dtype = STORAGE_DTYPES[dtype_name]
    rounded = values.detach().to("cpu", torch_dtype).contiguous()
    if torch_dtype is torch.bfloat16:
        return rounded.view(torch.int16).numpy().view(disk_dtype)
    return rounded.numpy()


def from_storage(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    """Zero-copy torch view of on-disk values (bf16 bits are reinterpreted, not converted)."""
    _, torch_dtype = STORAGE_DTYPES[dtype_name]
    with warnings.catch_warnings():
        # Read-only memory maps are never written through these views.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    if torch_dtype is torch.bfloat16:
        return tensor.view(torch.bfloat16)
    return tensor
