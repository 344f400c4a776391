"""LoRIF indexer: per-example projected gradients, rank-c factors, curvature, HDF5 index.

Layers, each depending only on those below it: ``core`` (the math, torch only), ``inputs``
(records, tokenization, the model), ``store`` (the file), ``build`` (the pipeline).
"""

from lorif_serve.errors import BuildError, IndexFileError
from lorif_serve.indexer.build.config import IndexConfig
from lorif_serve.indexer.build.pipeline import build_index
from lorif_serve.indexer.build.summary import BuildSummary
from lorif_serve.indexer.store.reader import IndexReader

__all__ = [
    "BuildError",
    "BuildSummary",
    "IndexConfig",
    "IndexFileError",
    "IndexReader",
    "build_index",
]
