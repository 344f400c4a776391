"""What explanations and filters cost, side by side in one process.

Demo index, real model, the app in process: held-out queries (headline + opening → next
words) with top_k = 10, answered plain, with ``explain`` (10 and 20 examples explained),
and filtered to one topic (mask cached after the first query). Then the 1 M-row synthetic
index: one engine scan unfiltered vs with a 20 % row mask, and the start-up cost of the
filter columns.

    python -m benchmarks.explain --index .cache/bbc/bbc.h5 --model .cache/bbc/model-300steps \\
        --synthetic .cache/syn-1m.h5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from lorif_serve.indexer.core.query import ScanQuery
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.app import create_app
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.filters import FieldColumns
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.settings import ServerSettings

from .common import median_seconds, write_result


def held_out(path: Path, count: int) -> list[dict[str, Any]]:
    queries = []
    for line in path.read_text(encoding="utf-8").splitlines()[:count]:
        article = json.loads(line)
        lines = [x.strip() for x in article["text"].splitlines() if x.strip()]
        words = " ".join(lines[1:]).split()
        prompt = lines[0] + "\n\n" + " ".join(words[:12])
        queries.append(
            {
                "prompt": prompt,
                "completion": " " + " ".join(words[12:40]),
                "topic": article["topic"],
            }
        )
    return queries


def timed(client: TestClient, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    began = time.perf_counter()
    response = client.post("/v1/attributions", json=body)
    seconds = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(response.text)
    return seconds, response.json()


def demo_rows(index: Path, model: Path, held: Path, count: int) -> list[dict[str, Any]]:
    settings = ServerSettings(index=index, model=model, device="cpu", residency="ram")
    app = create_app(settings, load_service(settings, ServerMetrics()))
    queries = held_out(held, count)
    variants = {
        "plain": {},
        "explain, k=10": {"explain": True},
        "explain, k=10 + 10 opponents": {"explain": True, "opponents": True},
        "filter topic (cached mask)": {"filter": "topic"},
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with TestClient(app) as client:
        for query in queries:
            base = {"prompt": query["prompt"], "completion": query["completion"], "top_k": 10}
            timed(client, base)  # warm
            for name, extra in variants.items():
                body = {**base, **extra}
                if extra.get("filter"):
                    body["filter"] = {"topic": query["topic"]}
                    timed(client, body)  # the first query of a filter builds its mask
                times[name].append(timed(client, body)[0])
    plain = statistics.median(times["plain"])
    return [
        {
            "variant": name,
            "median_ms": 1000 * statistics.median(values),
            "extra_ms": 1000 * (statistics.median(values) - plain),
            "ratio": statistics.median(values) / plain,
        }
        for name, values in times.items()
    ]


def synthetic_rows(path: Path) -> dict[str, Any]:
    with IndexReader(path) as reader:
        began = time.perf_counter()
        columns = FieldColumns.from_reader(reader)
        columns_s = time.perf_counter() - began
        engine = ScanEngine(reader, torch.device("cpu"), "ram")
        generator = torch.Generator().manual_seed(0)
        hq = {s.name: torch.randn(1, s.d1, s.d2, generator=generator) for s in reader.layout.layers}
        query = ScanQuery(hq)
        mask = (torch.rand(reader.n_examples, generator=generator) < 0.2)[None]
        plain = median_seconds(lambda: engine.scan(query, 10, 10), repeats=5)
        filtered = median_seconds(lambda: engine.scan(query, 10, 10, mask), repeats=5)
        return {
            "rows": reader.n_examples,
            "kernel": engine.kernel,
            "columns_s": columns_s,
            "fields": sorted(columns.columns),
            "plain_ms": 1000 * plain,
            "filtered_ms": 1000 * filtered,
        }


def table(demo: list[dict[str, Any]], synthetic: dict[str, Any] | None, count: int) -> str:
    lines = [
        f"Demo index, real model, in-process HTTP, {count} held-out queries, top_k = 10 "
        "(median per query):",
        "",
        "| variant | median ms | extra ms | × plain |",
        "|---|---:|---:|---:|",
    ]
    for row in demo:
        lines.append(
            f"| {row['variant']} | {row['median_ms']:.0f} | {row['extra_ms']:+.0f} | "
            f"{row['ratio']:.2f} |"
        )
    if synthetic is not None:
        lines += [
            "",
            f"Synthetic index, {synthetic['rows']:,} rows, residency ram, kernel "
            f"{synthetic['kernel']}, B = 1, top-10 + bottom-10 (median of 5):",
            "",
            "| scan | ms |",
            "|---|---:|",
            f"| unfiltered | {synthetic['plain_ms']:.0f} |",
            f"| 20 % row mask | {synthetic['filtered_ms']:.0f} |",
            "",
            f"Filter columns built at start-up in {synthetic['columns_s']:.1f} s "
            f"(fields: {', '.join(synthetic['fields']) or 'none'}).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=Path, default=Path(".cache/bbc/bbc.h5"))
    parser.add_argument("--model", type=Path, default=Path(".cache/bbc/model-300steps"))
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument("--synthetic", type=Path)
    parser.add_argument("--queries", type=int, default=8)
    args = parser.parse_args()
    demo = demo_rows(args.index, args.model, args.held_out, args.queries)
    synthetic = synthetic_rows(args.synthetic) if args.synthetic else None
    write_result(
        "explain",
        {"demo": demo, "synthetic": synthetic, "queries": args.queries},
        table(demo, synthetic, args.queries),
    )


if __name__ == "__main__":
    main()
