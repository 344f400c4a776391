"""Peak memory of featurizing one query, per token, and what stays afterwards.

    python -m benchmarks.memory [--model demo|smollm2|PATH]

Each length runs in a fresh process: load the model, record RSS, featurize one query of T
tokens the way the server does (``ModelFeaturizer``: hooks, projections at f = 4, one
forward and backward), sample RSS every 2 ms during the pass, and record RSS after it
(the featurizer trims the heap after passes of ≥ 256 tokens). The server's
``max_batch_tokens`` bounds the padded tokens of one pass, so peak ≈ base + T × per-token.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from lorif_serve.indexer.core.projection import make_projection, projected_dims
from lorif_serve.indexer.inputs.layers import find_layers
from lorif_serve.indexer.inputs.lm import load_model
from lorif_serve.server.featurizer import ModelFeaturizer

from .common import write_result

LENGTHS = (128, 512, 2048)
DEMO = Path(".cache/bbc/model-300steps")


def model_path(name: str) -> Path:
    if name == "demo":
        return DEMO
    if name == "smollm2":
        from .indexing import smollm2_gguf

        return smollm2_gguf()
    return Path(name)


def child(path: Path, tokens: int) -> dict[str, float]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_model(path, "cpu", "float32")
    projections = {}
    for layer in find_layers(loaded.model):
        d1, d2 = projected_dims(layer.in_features, layer.out_features, 4, None, None)
        projections[layer.name] = make_projection(
            layer.name, layer.in_features, layer.out_features, d1, d2, 0
        )
    featurizer = ModelFeaturizer(loaded.model, loaded.tokenizer, projections, torch.device("cpu"))
    vocab = int(loaded.model.get_input_embeddings().weight.shape[0])
    ids = torch.randint(1, vocab, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    process = psutil.Process()
    featurizer.gradients([(ids[:8], 4)])  # warm-up: allocator pools, lazy init
    base = process.memory_info().rss
    peak = base
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    featurizer.gradients([(ids, 1)])
    seconds = time.perf_counter() - began
    running = False
    sampler.join()
    after = process.memory_info().rss
    return {"tokens": tokens, "base": base, "peak": peak, "after": after, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = model_path(args.model)
    if args.child:
        print(json.dumps(child(path, args.child)))
        return
    rows = []
    for tokens in LENGTHS:
        command = [sys.executable, "-m", "benchmarks.memory", "--model", str(path)]
        out = subprocess.run([*command, "--child", str(tokens)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mib = 2**20
    table = f"Model: {path.name}; one query per process, f = 4.\n\n"
    table += "| tokens | RSS before | peak during the pass | peak − before per token | RSS after | seconds |\n"
    table += "|---|---|---|---|---|---|\n"
    for r in rows:
        table += (
            f"| {r['tokens']:,} | {r['base'] / mib:,.0f} MiB | {r['peak'] / mib:,.0f} MiB | "
            f"{(r['peak'] - r['base']) / r['tokens'] / 1024:,.0f} KiB | "
            f"{r['after'] / mib:,.0f} MiB | {r['seconds']:.2f} |\n"
        )
    name = "memory" if args.model == "demo" else f"memory-{path.stem.split('.')[0].lower()}"
    write_result(name, {"model": str(path), "rows": rows}, table)


if __name__ == "__main__":
    main()
