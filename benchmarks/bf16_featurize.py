"""Does a bf16 query featurization keep the scores, and what does it save?

For held-out queries (headline → opening) against an index and its model: the query's
forward/backward in float32 and under ``torch.autocast("cpu", torch.bfloat16)`` (the hooks,
projections and preconditioning unchanged), side by side in one process. Reports the median
featurize time of each, the cosine of the preconditioned query gradients, and how the exact
scores over every stored row agree: Spearman correlation, and the overlap of the top-10 and
bottom-10 rows.

    python -m benchmarks.bf16_featurize --index .cache/bbc/bbc.h5 --model .cache/bbc/model-300steps
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lorif_serve.indexer.core.query import ScanQuery, precondition
from lorif_serve.indexer.inputs.lm import load_model
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.featurizer import ModelFeaturizer

from .common import write_result


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def overlap(a: torch.Tensor, b: torch.Tensor, k: int, largest: bool) -> float:
    ta = set(a.topk(k, largest=largest).indices.tolist())
    tb = set(b.topk(k, largest=largest).indices.tolist())
    return len(ta & tb) / k


def run(index: Path, model: Path, held_out: Path, count: int) -> dict[str, Any]:
    loaded = load_model(model, "cpu")
    with IndexReader(index) as reader:
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        featurizer = ModelFeaturizer(
            loaded.model, loaded.tokenizer, projections, torch.device("cpu")
        )
        curvatures = {
            s.name: reader.curvature(i).to("cpu", torch.float32)
            for i, s in enumerate(reader.layers)
        }
        engine = ScanEngine(reader, torch.device("cpu"), "ram", kernel="fused")
        lines = held_out.read_text(encoding="utf-8").splitlines()[:count]
        rows: list[dict[str, float]] = []
        for line in lines:
            head, _, body = json.loads(line)["text"].partition("\n\n")
            encoded = [featurizer.encode(head, " " + " ".join(body.split()[:60]))]
            result: dict[str, Any] = {}
            for name, context in (
                ("fp32", contextlib.nullcontext),
                ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
            ):
                with context():
                    featurizer.gradients(encoded)  # warm-up
                    began = time.perf_counter()
                    grads, _ = featurizer.gradients(encoded)
                    seconds = time.perf_counter() - began
                grads = {k: v.float() for k, v in grads.items()}
                hq = precondition(reader.layers, curvatures, grads)
                scores = torch.empty(1, reader.n_examples)
                everything = engine.scan(ScanQuery(hq), reader.n_examples)
                scores[0, everything.top_rows[0]] = everything.top_scores[0]
                result[name] = (seconds, torch.cat([h.flatten() for h in hq.values()]), scores[0])
            (t32, h32, s32), (t16, h16, s16) = result["fp32"], result["bf16"]
            rows.append(
                {
                    "fp32_ms": 1000 * t32,
                    "bf16_ms": 1000 * t16,
                    "cosine": float(h32 @ h16 / (h32.norm() * h16.norm())),
                    "spearman": spearman(s32, s16),
                    "top10": overlap(s32, s16, 10, True),
                    "bottom10": overlap(s32, s16, 10, False),
                }
            )
    summary = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    summary["min_top10"] = min(r["top10"] for r in rows)
    return {"index": index.name, "model": model.name, "queries": len(rows), **summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=Path, action="append", required=True)
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument("--queries", type=int, default=16)
    args = parser.parse_args()
    results = [
        run(index, model, args.held_out, args.queries)
        for index, model in zip(args.index, args.model, strict=True)
    ]
    table = (
        "Query featurization in float32 and under bf16 autocast (medians over held-out "
        "queries; scores over every stored row):\n\n"
        "| model | index | queries | fp32 ms | bf16 ms | speed-up | cosine Hq | Spearman | "
        "top-10 overlap (min) | bottom-10 overlap |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in results:
        table += (
            f"| {r['model']} | {r['index']} | {r['queries']} | {r['fp32_ms']:.0f} | "
            f"{r['bf16_ms']:.0f} | {r['fp32_ms'] / r['bf16_ms']:.2f}× | {r['cosine']:.4f} | "
            f"{r['spearman']:.4f} | {r['top10']:.2f} ({r['min_top10']:.1f}) | "
            f"{r['bottom10']:.2f} |\n"
        )
    write_result("bf16_featurize", {"results": results}, table)
    print(table)


if __name__ == "__main__":
    main()
