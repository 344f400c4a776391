"""The one place that knows the index file's names, dtypes and format version.

The layout these names describe is documented in docs/index-format.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorif_serve.errors import ConfigError

FORMAT_NAME = "lorif-index"
FORMAT_VERSION = 2  # 2: curvature kinds (Woodbury subspace or Kronecker factors)

# Root attributes.
ATTR_FORMAT = "format"
ATTR_VERSION = "format_version"
ATTR_METADATA = "metadata"  # JSON: config, model, tokenizer, dataset, layers, loss, ...
ATTR_STORAGE_DTYPE = "storage_dtype"  # on the factor dataset: bfloat16 | float16 | float32 | int8
ATTR_CHECKSUMMED = "checksummed"  # on the checksum dataset: JSON list of dataset names

# Datasets.
FACTORS = "factors"  # (N, F) packed rows, see indexer.factors.RowLayout
EXAMPLE_IDS = "examples/id"  # (N,) UTF-8
EXAMPLE_TEXT = "examples/text"  # (N,) UTF-8
EXAMPLE_TOKENS = "examples/tokens"  # (N,) int32
EXAMPLE_METADATA = "examples/metadata"  # (N,) UTF-8 JSON object per example
CHECKSUMS = "checksums"  # (len(checksummed),) fixed-length hex digests, xxh3-128
CHECKSUM_WIDTH = 32

# Per-example columns, by the name the writer's ``examples`` argument uses.
EXAMPLE_COLUMNS = {
    "id": EXAMPLE_IDS,
    "text": EXAMPLE_TEXT,
    "tokens": EXAMPLE_TOKENS,
    "metadata": EXAMPLE_METADATA,
}
# Datasets with one row per example: a manifest makes them virtual over its shards.
ROW_DATASETS = (FACTORS, *EXAMPLE_COLUMNS.values())

# Attributes of a layer group.
ATTR_LAYER_NAME = "name"
ATTR_LAYER_SEED = "seed"  # decimal string: a 63-bit seed does not fit every HDF5 int reader
ATTR_PROJECTION_RULE = "projection"
PROJECTION_RULE = "rademacher ±1/sqrt(width); P_out seed = seed + 1"
LAYERS_GROUP = "layers"
WOODBURY = "factors"  # the Woodbury subspace of the stored factors (eigvecs, eigvals)
WOODBURY_KINDS = (WOODBURY, "gradients")  # kinds stored as a subspace: of factors or dense G


def layer_group(index: int) -> str:
    return f"{LAYERS_GROUP}/{index:04d}"


def p_in(index: int) -> str:
    return f"{layer_group(index)}/p_in"  # (I, d1) float32


def p_out(index: int) -> str:
    return f"{layer_group(index)}/p_out"  # (O, d2) float32


def eigvecs(index: int) -> str:
    return f"{layer_group(index)}/eigvecs"  # (D, r) float32


def eigvals(index: int) -> str:
    return f"{layer_group(index)}/eigvals"  # (r,) float32


def curvature_scalars(index: int) -> str:
    # (2,) float64: damping λ, trace; Kronecker kinds (3,): λ, trace, whitening ratio ρ
    return f"{layer_group(index)}/curvature_scalars"


def basis_in(index: int) -> str:
    return f"{layer_group(index)}/basis_in"  # (d1, d1) float32: Q_A


def basis_out(index: int) -> str:
    return f"{layer_group(index)}/basis_out"  # (d2, d2) float32: Q_S


def values_in(index: int) -> str:
    return f"{layer_group(index)}/values_in"  # (d1,) float32: eigenvalues of A


def values_out(index: int) -> str:
    return f"{layer_group(index)}/values_out"  # (d2,) float32: eigenvalues of S


def grid_eigvals(index: int) -> str:
    return f"{layer_group(index)}/grid_eigvals"  # (d1, d2) float32: Λ in the Kronecker basis


def curvature_datasets(index: int, kind: str) -> list[str]:
    """One layer's curvature datasets: the Woodbury subspace, or the Kronecker factors."""
    if kind in WOODBURY_KINDS:
        return [eigvecs(index), eigvals(index), curvature_scalars(index)]
    return [
        basis_in(index),
        basis_out(index),
        values_in(index),
        values_out(index),
        grid_eigvals(index),
        curvature_scalars(index),
    ]


def layer_datasets(index: int, kind: str) -> list[str]:
    """Every dataset of one layer: projections, then curvature."""
    return [p_in(index), p_out(index), *curvature_datasets(index, kind)]


def checksummed_datasets(n_layers: int, kind: str) -> list[str]:
    """The datasets a single-file index checksums, in the order the digests are stored."""
    names = [*EXAMPLE_COLUMNS.values(), FACTORS]
    for index in range(n_layers):
        names += layer_datasets(index, kind)
    return names


def required_datasets(n_layers: int, kind: str) -> list[str]:
    """What a readable index must contain."""
    return [*checksummed_datasets(n_layers, kind), CHECKSUMS]


def curvature_kind(metadata: dict[str, Any]) -> str:
    """The curvature kind an index holds (recorded in its config)."""
    return str(metadata["config"]["curvature"])


def partial_path(out: Path, suffix: str = "") -> Path:
    """Where work towards ``out`` happens until the final rename (``x.h5.partial<suffix>``)."""
    return out.with_name(f"{out.name}.partial{suffix}")


# Storage dtypes: name → (numpy on-disk dtype, torch dtype it stands for).
STORAGE_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),  # HDF5 has no bf16: the raw bit pattern
    "float16": (np.dtype("<f2"), torch.float16),
    "float32": (np.dtype("<f4"), torch.float32),
    "int8": (np.dtype("i1"), torch.int8),  # with a float32 scale per segment (core.codec)
}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "i8": "int8"}


def storage_dtype_name(name: str) -> str:
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in STORAGE_DTYPES:
        raise ConfigError(f"unknown storage dtype {name!r}; use one of {sorted(STORAGE_DTYPES)}")
    return canonical


def torch_storage_dtype(dtype_name: str) -> torch.dtype:
    return STORAGE_DTYPES[dtype_name][1]


def to_storage(values: torch.Tensor, dtype_name: str) -> np.ndarray:
    """The on-disk numpy array of a tensor already in the storage dtype (or a float one)."""
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
