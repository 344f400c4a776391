"""LoRIF indexer: per-example projected gradients, rank-c factors, curvature, HDF5 index."""

__version__ = "0.1.0"

from .build import BuildError, BuildSummary, build_index  # noqa: E402
from .config import IndexConfig  # noqa: E402
from .reader import IndexFileError, IndexReader  # noqa: E402

__all__ = [
    "BuildError",
    "BuildSummary",
    "IndexConfig",
    "IndexFileError",
    "IndexReader",
    "build_index",
]
