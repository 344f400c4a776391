"""How tight is the bounded pass on real queries, and how many rows does it keep?

For held-out queries (headline → opening) against an index and its model: the int8 query's
error bound per row (mean margin, in standard deviations of the query's exact scores) and
the rows whose interval reaches the exact top-10 or bottom-10 (the candidates a scan
rescores), as a fraction of the index, for one and two int8 query levels over row tiles.
Medians over the queries.

    python -m benchmarks.bound_width --index .cache/bbc/bbc.h5 --model .cache/bbc/model-300steps
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.kernels.build import load_kernel
from lorif_serve.server.tiled import TiledRows

from .common import write_result
from .scan_kernels import held_out_queries


def run(index: Path, model: Path, held_out: Path, count: int, k: int) -> dict[str, Any]:
    kernel = load_kernel().kernel
    if kernel is None or not kernel.has_bounded:
        raise SystemExit("needs the compiled bounded kernel (AVX-512 VNNI or AVX2)")
    hq = held_out_queries(index, model, held_out, count)
    with IndexReader(index) as reader:
        rows = reader.rows(0, reader.n_examples).clone()
        prepared = kernel.prepare(reader.layout, reader.codec, hq)
        n, layers = reader.n_examples, len(reader.layers)
    batch = prepared.batch
    exact = kernel.score(prepared, rows, torch.empty(batch, n))
    norms = kernel.row_norms(prepared, rows)
    tiles = TiledRows(kernel, prepared.meta, rows.clone())
    out: dict[str, Any] = {"index": index.name, "n": n, "layers": layers, "queries": batch}
    for levels in (1, 2):
        approx, margin = torch.empty(batch, n), torch.empty(batch, n)
        tiles.bounded(prepared, 0, n, norms, approx, margin, levels)
        low, high = approx - margin, approx + margin
        widths, kept = [], []
        for b in range(batch):
            top = exact[b].topk(k).values[-1]
            bottom = exact[b].topk(k, largest=False).values[-1]
            reach = (high[b] >= top) | (low[b] <= bottom)
            widths.append(float(margin[b].mean() / exact[b].std()))
            kept.append(float(reach.float().mean()))
        out[f"margin_in_std_{levels}"] = statistics.median(widths)
        out[f"kept_fraction_{levels}"] = statistics.median(kept)
        out[f"kept_max_{levels}"] = max(kept)
    out["chosen_levels"] = tiles.levels(prepared, norms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=Path, action="append", required=True)
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    results = [
        run(index, model, args.held_out, args.queries, args.k)
        for index, model in zip(args.index, args.model, strict=True)
    ]
    table = (
        f"The int8 query's bound on real queries (top-{args.k} and bottom-{args.k}; medians "
        "over held-out queries), with one and two query levels, and the levels the scan's "
        "probe chooses:\n\n| index | N | layers | queries | levels | mean margin / score std "
        "| rows kept (max) | chosen |\n|---|---|---|---|---|---|---|---|\n"
    )
    for r in results:
        for levels in (1, 2):
            table += (
                f"| {r['index']} | {r['n']:,} | {r['layers']} | {r['queries']} | {levels} | "
                f"{r[f'margin_in_std_{levels}']:.3f} | "
                f"{100 * r[f'kept_fraction_{levels}']:.1f} % "
                f"({100 * r[f'kept_max_{levels}']:.1f} %) | "
                f"{'✔' if r['chosen_levels'] == levels else ''} |\n"
            )
    write_result("bound_width", {"results": results}, table)
    print(table)


if __name__ == "__main__":
    main()
