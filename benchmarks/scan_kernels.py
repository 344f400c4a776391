"""The CPU scan kernels side by side, in one process: torch, fused, bounded.

For each index (the demo index and the 1 M-row synthetic one, residency ram), one exact
top-10 + bottom-10 scan at B = 1 and B = 16 real preconditioned queries (held-out articles):
median scan ms, the read floor (the same bytes copied block by block into a buffer), the
ratio, the rows the bounded scan rescored, and whether its answer equals the fused scan's
bit for bit. Then HTTP queries/s on the demo index with each kernel.

    python -m benchmarks.scan_kernels --index .cache/bbc/bbc.h5 --model .cache/bbc/model-300steps \\
        --synthetic .cache/syn-1m.h5
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from examples.bbc.serve import demo_query
from lorif_serve.indexer.core.factors import LayerSpec
from lorif_serve.indexer.core.query import ScanQuery, precondition
from lorif_serve.indexer.inputs.lm import load_model
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.featurizer import ModelFeaturizer

from .common import median_seconds, write_result
from .serving import http_section, read_floor
from .synthetic import random_index

KERNELS = ("torch", "fused", "bounded")
# The bounded pass over rows in stored order (LORIF_ROW_TILES=0), over tiles with one
# query level where the probe chose one (no second level on undecided tiles: LORIF_REFINE=0),
# and over tiles on vector registers where the default takes AMX tiles (LORIF_AMX=0), next to
# the default.
VARIANTS = {
    "bounded-rows": ("LORIF_ROW_TILES", "0"),
    "bounded-one-level": ("LORIF_REFINE", "0"),
    "bounded-vector": ("LORIF_AMX", "0"),
}
ENGINE_KERNELS = (*KERNELS, *VARIANTS)
# Kernels whose exact scores sum the same float32 products in another order than the fused
# scan measured here (torch; the vector pass's orientation where the default takes AMX's):
# their answers are compared by rows, the bounded ones with the fused scan bit for bit.
REORDERED = ("torch", "bounded-vector")


def _same_rows(fused: Any, mine: Any) -> bool:
    return torch.equal(fused.top_rows, mine.top_rows) and torch.equal(
        fused.bottom_rows, mine.bottom_rows
    )


def held_out_queries(
    index: Path, model_dir: Path, held_out: Path, count: int
) -> dict[str, torch.Tensor]:
    """Preconditioned gradients of ``count`` held-out articles (headline → opening)."""
    loaded = load_model(model_dir, "cpu")
    with IndexReader(index) as reader:
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        featurizer = ModelFeaturizer(
            loaded.model, loaded.tokenizer, projections, torch.device("cpu")
        )
        encoded = []
        for line in held_out.read_text(encoding="utf-8").splitlines()[:count]:
            head, _, body = json.loads(line)["text"].partition("\n\n")
            encoded.append(featurizer.encode(head, " " + " ".join(body.split()[:60])))
        grads, _ = featurizer.gradients(encoded)
        curvatures = {
            s.name: reader.curvature(i).to("cpu", torch.float32)
            for i, s in enumerate(reader.layers)
        }
        return precondition(reader.layers, curvatures, grads)


def engine_rows(
    index: Path,
    hq: dict[str, torch.Tensor],
    batches: tuple[int, ...] = (1, 16),
    kernels: tuple[str, ...] = ENGINE_KERNELS,
) -> list[dict[str, Any]]:
    """One engine at a time (each holds its own resident copy of the rows). A bounded row
    is checked against the fused answer of its batch size where that was measured."""
    rows, answers = [], {}
    with IndexReader(index) as reader:
        big = reader.n_examples * reader.bytes_per_example > 2**30  # minutes per torch scan
        for kernel in kernels:
            for variable, _ in VARIANTS.values():
                os.environ[variable] = "1"
            if kernel in VARIANTS:
                variable, value = VARIANTS[kernel]
                os.environ[variable] = value
            engine = ScanEngine(reader, torch.device("cpu"), "ram", kernel=kernel.split("-")[0])
            floor = read_floor(engine)
            for batch in batches:
                if kernel == "torch" and big and batch > 1:
                    continue  # minutes per scan; the B = 1 row makes the comparison
                query = ScanQuery({name: h[:batch] for name, h in hq.items()})
                answers[kernel, batch] = engine.scan(query, 10, 10)
                repeats = 1 if kernel == "torch" and big else 5
                seconds = median_seconds(
                    lambda e=engine, q=query: e.scan(q, 10, 10), repeats, warmup=0
                )
                rows.append(
                    {
                        "index": index.name,
                        "n": reader.n_examples,
                        "batch": batch,
                        "kernel": kernel,
                        "scan_ms": 1000 * seconds,
                        "read_floor_ms": 1000 * floor,
                        "scan_over_read": seconds / floor,
                        "rescored_fraction": answers[kernel, batch].rescored / reader.n_examples,
                    }
                )
            del engine
    fields = ("top_scores", "top_rows", "bottom_scores", "bottom_rows")
    for row in rows:
        fused = answers.get(("fused", row["batch"]))
        mine = answers[row["kernel"], row["batch"]]
        if fused is None:
            continue
        if row["kernel"] in REORDERED:  # float32 in another order: same rows expected
            row["equal_to_fused"] = f"rows {_same_rows(fused, mine)}"
        elif row["kernel"].startswith("bounded"):
            row["equal_to_fused"] = all(
                torch.equal(getattr(fused, f), getattr(mine, f)) for f in fields
            )
    return rows


def smollm2_specs(factor: int = 8, rank: int = 1) -> list[LayerSpec]:
    """SmolLM2-135M's 30 blocks of q, k, v, o, gate, up, down at projection factor f."""
    shapes = {
        "self_attn.q_proj": (576, 576),
        "self_attn.k_proj": (576, 192),
        "self_attn.v_proj": (576, 192),
        "self_attn.o_proj": (576, 576),
        "mlp.gate_proj": (576, 1536),
        "mlp.up_proj": (576, 1536),
        "mlp.down_proj": (1536, 576),
    }
    return [
        LayerSpec(f"model.layers.{b}.{name}", i, o, i // factor, o // factor, rank)
        for b in range(30)
        for name, (i, o) in shapes.items()
    ]


def random_queries(specs: list[LayerSpec], batch: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {s.name: torch.randn(batch, s.d1, s.d2, generator=generator) for s in specs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--synthetic", type=Path)
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument(
        "--smollm2-rows",
        type=int,
        default=0,
        help="instead: N random int8 rows at SmolLM2-135M dims (f = 8, c = 1), random queries",
    )
    parser.add_argument("--batches", default="1,16", help="query batch sizes, comma-separated")
    parser.add_argument(
        "--kernels",
        default=",".join(ENGINE_KERNELS),
        help=f"engine kernels to time, comma-separated (of {', '.join(ENGINE_KERNELS)})",
    )
    parser.add_argument("--out", default="", help="result name suffix (e.g. -b16)")
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    kernels = tuple(args.kernels.split(","))
    if unknown := set(kernels) - set(ENGINE_KERNELS):
        parser.error(f"unknown kernels: {', '.join(sorted(unknown))}")
    rows = []
    if args.smollm2_rows:  # kernel speed; random rows make the pruning pessimistic
        specs = smollm2_specs()
        path = Path(f".cache/syn-smollm2-{args.smollm2_rows // 1000}k.h5")
        random_index(path, specs, args.smollm2_rows, rank=8, storage="int8")
        rows = engine_rows(path, random_queries(specs, max(batches)), batches, kernels)
        write_result(f"scan_kernels-smollm2{args.out}", {"engine": rows}, _table(rows))
        print(_table(rows))
        return
    hq = held_out_queries(args.index, args.model, args.held_out, 16)
    for index in [args.index] + ([args.synthetic] if args.synthetic else []):
        rows += engine_rows(index, hq, batches, kernels)
    table = _table(rows)
    http = {}
    if not args.no_http:
        prompt, completion, _ = demo_query(args.held_out)
        table += "\nHTTP, demo index, residency ram, 8 s per level (queries/s):\n\n"
        table += "| kernel | 1 client | 4 clients | 16 clients |\n|---|---|---|---|\n"
        for kernel in KERNELS:
            levels = http_section(
                args.index, args.model, (prompt, completion), "--scan-kernel", kernel
            )
            http[kernel] = levels
            qps = {level["clients"]: level["qps"] for level in levels}
            table += f"| {kernel} | {qps[1]:.1f} | {qps[4]:.1f} | {qps[16]:.1f} |\n"
    write_result(f"scan_kernels{args.out}", {"engine": rows, "http": http}, table)
    print(table)


def _table(rows: list[dict[str, Any]]) -> str:
    table = (
        "| index | N | B | kernel | scan ms | read floor ms | scan / read | rescored | "
        "equal to fused |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        same = r.get("equal_to_fused", "")
        table += (
            f"| {r['index']} | {r['n']:,} | {r['batch']} | {r['kernel']} | {r['scan_ms']:.1f} | "
            f"{r['read_floor_ms']:.1f} | {r['scan_over_read']:.2f} | "
            f"{100 * r['rescored_fraction']:.2f} % | {same} |\n"
        )
    return table


if __name__ == "__main__":
    main()
