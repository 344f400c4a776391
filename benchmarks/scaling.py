"""Scan latency against N, c and D, and LoRIF against LoGRA-dense at equal D (CPU, B = 1).

Synthetic indexes of random bf16 rows, 14 square layers (d1 = d2 = d), residency ram,
medians of 5 scans. LoRIF is timed with the exact dense query and with low-rank queries.

    python -m benchmarks.scaling
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from lorif_serve.indexer.core.factors import LayerSpec
from lorif_serve.indexer.core.query import ScanQuery
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.engine import ScanEngine

from .common import RESULTS, median_seconds, write_result
from .synthetic import random_index

LAYERS = 14
VERSUS_N = 20_000  # dense rows are D values each: 2.3 GB at d = 64


def specs(d: int, c: int, dense: bool = False) -> list[LayerSpec]:
    return [LayerSpec(f"layer{i}", 4 * d, 4 * d, d, d, c, dense) for i in range(LAYERS)]


def scan_ms(path: Path, mode: dict[str, Any], batch: int = 1) -> tuple[float, int]:
    with IndexReader(path) as reader:
        engine = ScanEngine(reader, torch.device("cpu"), "ram")
        hq = {s.name: torch.randn(batch, s.d1, s.d2) for s in reader.layers}
        query = ScanQuery(hq, **mode)
        seconds = median_seconds(lambda: engine.scan(query, 10), repeats=5)
        return 1000 * seconds, reader.bytes_per_example


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, default=Path(".cache/scaling"))
    parser.add_argument("--max-n", type=int, default=1_000_000)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    def index(n: int, d: int, c: int, dense: bool = False) -> Path:
        name = f"{'dense' if dense else 'lorif'}-n{n}-d{d}-c{c}.h5"
        return random_index(args.cache / name, specs(d, c, dense), n)

    rows: dict[str, list[dict[str, Any]]] = {"n": [], "c": [], "d": [], "versus": []}
    sizes = [n for n in (10_000, 100_000, 300_000, 1_000_000) if n <= args.max_n]
    for n in sizes:
        ms, _ = scan_ms(index(n, 32, 1), {})
        rows["n"].append({"n": n, "scan_ms": ms, "ms_per_100k": 1e5 * ms / n})
    for c in (1, 2, 4, 8):
        ms, size = scan_ms(index(100_000, 32, c), {})
        rows["c"].append({"c": c, "scan_ms": ms, "bytes_per_example": size})
    for d in (16, 32, 64):
        ms, size = scan_ms(index(100_000, d, 1), {})
        rows["d"].append({"d": d, "D": d * d, "scan_ms": ms, "bytes_per_example": size})
    for d in (32, 64):
        dense_ms, dense_size = scan_ms(index(VERSUS_N, d, 1, dense=True), {})
        for label, mode in (("exact", {}), ("rank 1", {"rank": 1}), ("rank 4", {"rank": 4})):
            ms, size = scan_ms(index(VERSUS_N, d, 1), mode)
            rows["versus"].append(
                {
                    "d": d,
                    "query": label,
                    "lorif_ms": ms,
                    "dense_ms": dense_ms,
                    "speedup": dense_ms / ms,
                    "storage_ratio": dense_size / size,
                }
            )
    plot(rows)
    table = (
        f"Synthetic indexes, {LAYERS} square layers, bf16, residency ram, B = 1, medians of 5.\n\n"
    )
    table += "Latency vs N (d = 32, c = 1):\n\n| N | scan ms | ms per 100 k rows |\n|---|---|---|\n"
    table += "".join(
        f"| {r['n']:,} | {r['scan_ms']:.1f} | {r['ms_per_100k']:.1f} |\n" for r in rows["n"]
    )
    table += (
        "\nLatency vs c (N = 100 k, d = 32):\n\n| c | bytes/example | scan ms |\n|---|---|---|\n"
    )
    table += "".join(
        f"| {r['c']} | {r['bytes_per_example']:,} | {r['scan_ms']:.1f} |\n" for r in rows["c"]
    )
    table += "\nLatency vs D (N = 100 k, c = 1):\n\n| d1 = d2 | D | bytes/example | scan ms |\n|---|---|---|---|\n"
    table += "".join(
        f"| {r['d']} | {r['D']:,} | {r['bytes_per_example']:,} | {r['scan_ms']:.1f} |\n"
        for r in rows["d"]
    )
    table += (
        f"\nLoRIF (c = 1) vs LoGRA-dense at equal D (N = {VERSUS_N:,}):\n\n"
        "| d1 = d2 | LoRIF query | LoRIF ms | LoGRA-dense ms | speed-up | storage ratio |\n"
        "|---|---|---|---|---|---|\n"
    )
    table += "".join(
        f"| {r['d']} | {r['query']} | {r['lorif_ms']:.1f} | {r['dense_ms']:.1f} | "
        f"{r['speedup']:.2f}× | {r['storage_ratio']:.1f}× |\n"
        for r in rows["versus"]
    )
    write_result("scaling", rows, table)


def plot(rows: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in rows["n"]]
    ax.plot(ns, [r["scan_ms"] for r in rows["n"]], "o-", label="measured")
    slope = rows["n"][-1]["scan_ms"] / ns[-1]
    ax.plot(ns, [slope * n for n in ns], "--", color="grey", label="linear through the largest N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("examples N")
    ax.set_ylabel("scan ms (B = 1)")
    ax.set_title("Scan latency vs N (CPU, residency ram)")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "scaling_n.png", dpi=120)


if __name__ == "__main__":
    main()
