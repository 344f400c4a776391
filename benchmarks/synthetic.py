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

from indexer.reader import IndexReader
from indexer.writer import RawWriter, create_index_file


def make_synthetic(source: Path, n: int, out: Path, seed: int = 0) -> Path:
    if out.exists():
        return out
    partial = out.with_name(out.name + ".partial")
    with IndexReader(source) as reader:
        metadata = dict(reader.metadata)
        metadata["dataset"] = {**metadata["dataset"], "path": f"synthetic from {source}", "n": n}
        projections = [reader.projection(i) for i in range(len(reader.layers))]
        ranks = [int(reader.curvature(i).eigvals.numel()) for i in range(len(reader.layers))]
        columns = {
            "id": [f"syn#{i}" for i in range(n)],
            "text": [""] * n,
            "tokens": [0] * n,
            "metadata": [{}] * n,
        }
        create_index_file(
            partial, metadata, reader.layers, projections, ranks, columns, reader.storage_dtype
        )
        writer = RawWriter(partial)
        rng = np.random.default_rng(seed)
        source_rows = reader.rows(0, reader.n_examples)
        block = 65536
        for start in range(0, n, block):
            stop = min(start + block, n)
            picks = torch.from_numpy(rng.integers(0, reader.n_examples, stop - start))
            writer.write_rows(start, source_rows[picks].float())
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
