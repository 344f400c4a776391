"""A synthetic index of N rows with the real dims, projections and curvature of a built index.

Rows are real rows of the source index drawn at random (so values look like real factors);
ids are ``syn#<row>``. Used to measure scans at N far beyond the demo corpus.

    python -m benchmarks.synthetic --source .cache/bbc/bbc.h5 --n 1000000 --out .cache/syn-1m.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.indexer.store.writer import RawWriter, create_index_file


def make_synthetic(source: Path, n: int, out: Path, seed: int = 0) -> Path:
    if out.exists():
        return out
    partial = out.with_name(out.name + ".partial")
    with IndexReader(source) as reader:
        metadata = dict(reader.metadata)
        metadata["dataset"] = {**metadata["dataset"], "path": f"synthetic from {source}", "n": n}
        projections = [reader.projection(i) for i in range(len(reader.layers))]
        ranks = [reader.curvature(i).rank for i in range(len(reader.layers))]
        columns = {
            "id": [f"syn#{i}" for i in range(n)],
            "text": [""] * n,
            "tokens": [0] * n,
            "metadata": [{}] * n,
        }
        create_index_file(
            partial,
            metadata,
            reader.layers,
            projections,
            ranks,
            columns,
            reader.storage_dtype,
            reader.curvature_kind,
        )
        writer = RawWriter(partial)
        rng = np.random.default_rng(seed)
        source_rows = reader.values(0, reader.n_examples)  # re-encoded exactly by write_rows
        # rows per write: 65,536 (2 GiB of float32 values at most, for wide rows)
        block = max(1, min(65536, (2 << 30) // (4 * source_rows.shape[1])))
        for start in range(0, n, block):
            stop = min(start + block, n)
            picks = torch.from_numpy(rng.integers(0, reader.n_examples, stop - start))
            writer.write_rows(start, source_rows[picks])
        for i in range(len(reader.layers)):
            writer.write_curvature(i, reader.curvature(i))
        writer.finalize(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(make_synthetic(args.source, args.n, args.out))


if __name__ == "__main__":
    main()


def random_index(  # type: ignore[type-arg]
    path: Path, specs: list, n: int, seed: int = 0, rank: int = 8, storage: str = "bfloat16"
) -> Path:
    """An index of N random rows for the given layer specs (engine timings only: the
    curvature is a random orthonormal basis, the model identity a placeholder)."""
    from lorif_serve.indexer.core.curvature import Curvature
    from lorif_serve.indexer.core.factors import RowLayout
    from lorif_serve.indexer.core.projection import make_projection

    if path.exists():
        return path
    partial = path.with_name(path.name + ".partial")
    projections = [
        make_projection(s.name, s.in_features, s.out_features, s.d1, s.d2, 0) for s in specs
    ]
    ranks = [min(rank, s.dim) for s in specs]
    metadata = {
        "created_at": "synthetic",
        "config": {
            "seed": 0,
            "dense": specs[0].dense,
            "factor_rank": specs[0].rank,
            "precision": "float32",
            "curvature": "factors",
            "factor_metric": "raw",
        },
        "model": {
            "path": "none",
            "name": "synthetic",
            "architecture": "none",
            "config_hash": "",
            "weights_hash": "",
            "tokenizer_hash": "",
        },
        "dataset": {"path": "synthetic", "n": n},
        "layers": [s.to_dict() for s in specs],
    }
    columns = {
        "id": [f"r{i}" for i in range(n)],
        "text": [""] * n,
        "tokens": [0] * n,
        "metadata": [{}] * n,
    }
    create_index_file(partial, metadata, specs, projections, ranks, columns, storage)
    writer = RawWriter(partial)
    generator = torch.Generator().manual_seed(seed)
    width = RowLayout(specs).width
    block = max(1, min(65536, 2**28 // (4 * width)))  # ≤ 256 MB of float32 at a time
    for start in range(0, n, block):
        stop = min(start + block, n)
        writer.write_rows(start, torch.randn(stop - start, width, generator=generator))
    for i, (spec, r) in enumerate(zip(specs, ranks, strict=True)):
        basis = torch.linalg.qr(torch.randn(spec.dim, r, generator=generator))[0]
        writer.write_curvature(i, Curvature(basis, torch.ones(r), 1.0, float(spec.dim)))
    writer.finalize(path)
    return path
