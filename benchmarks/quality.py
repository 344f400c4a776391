"""Attribution quality on real text: fidelity to exact influence, LDS, planted duplicates.

    python -m benchmarks.quality --model .cache/bbc/model-300steps --subsets 64

Methods, all scored at the model fine-tuned on the whole pool:
- exact: damped influence with the full per-example gradients of every tracked layer and
  the exact inverse through the N×N Gram matrix: (G g − K (K+λI)⁻¹ G g)/λ, K = GGᵀ;
- LoGRA-dense and LoRIF (several f, c, r), built by the indexer and scored by the same
  code the server runs (`indexer.attribution`);
- gradient dot product (G g) and random.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from lorif_serve.indexer import IndexConfig, IndexReader, build_index
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate, token_summed_loss
from lorif_serve.indexer.core.query import ScanQuery, precondition, score_block
from lorif_serve.indexer.inputs.layers import find_layers
from lorif_serve.indexer.inputs.lm import LoadedModel, identify

from .common import write_result
from .quality_setting import Setting, build_setting

_PAPER = {"curvature": "factors", "damping": "trace"}  # the paper's Woodbury subspace
VARIANTS: dict[str, dict[str, Any]] = {  # name → index config overrides (f = projection factor)
    # The paper's Woodbury subspace of the stored factors (the previous default: f=4 c=1 r=64).
    "LoGRA-dense f=4": {**_PAPER, "projection_factor": 4, "dense": True, "curvature_rank": 256},
    "LoRIF f=4 c=1 r=64 (paper)": {**_PAPER, "projection_factor": 4, "factor_rank": 1},
    "LoRIF f=4 c=1 r=16": {
        **_PAPER,
        "projection_factor": 4,
        "factor_rank": 1,
        "curvature_rank": 16,
    },
    "LoRIF f=8 c=2 r=64": {**_PAPER, "projection_factor": 8, "factor_rank": 2},
    "LoRIF f=4 c=4 r=64": {**_PAPER, "projection_factor": 4, "factor_rank": 4},
    "LoRIF f=4 c=1 r=64, paper damping": {
        **_PAPER,
        "projection_factor": 4,
        "factor_rank": 1,
        "damping": "paper",
    },
    "LoRIF f=4 c=1 r=64, rank-1 query": {
        **_PAPER,
        "projection_factor": 4,
        "factor_rank": 1,
        "query_rank": 1,
    },
}
# Kronecker curvature in the projected space: kind × factor metric × f × c × damping.
VARIANTS["default (IndexConfig(): f=8 c=8 ekfac raw int8)"] = {}
for _kind in ("kfac", "ekfac"):
    VARIANTS[f"LoGRA-dense f=4 {_kind}"] = {
        "projection_factor": 4,
        "dense": True,
        "curvature": _kind,
        "damping": "trace:0.1",
    }
_FRONTIER = {
    ("ekfac", "raw"): ((4, 1), (4, 2), (4, 3), (4, 4), (8, 2), (8, 4), (2, 1), (2, 4)),
    ("ekfac", "whitened"): ((4, 1), (4, 2), (8, 4)),
    ("kfac", "raw"): ((4, 1), (8, 4)),
}
for (_kind, _metric), _points in _FRONTIER.items():
    for _f, _c in _points:
        VARIANTS[f"LoRIF f={_f} c={_c} {_kind} {_metric}"] = {
            "projection_factor": _f,
            "factor_rank": _c,
            "curvature": _kind,
            "factor_metric": _metric,
            "damping": "trace:0.1",
        }
# Dense references at every projection the frontier uses (what "¼ of the dense bytes" means).
for _f in (2, 1):
    VARIANTS[f"LoGRA-dense f={_f} ekfac"] = {
        "projection_factor": _f,
        "dense": True,
        "curvature": "ekfac",
        "damping": "trace:0.1",
    }
# int8 rows: twice the components of bf16 at the same bytes.
_INT8 = (
    (8, 8),
    (4, 1),
    (4, 8),
    (2, 1),
    (2, 8),
    (2, 16),
    (2, 22),
    (1, 1),
    (1, 16),
    (1, 22),
    (1, 44),
)
for _f, _c in _INT8:
    VARIANTS[f"LoRIF f={_f} c={_c} ekfac raw int8"] = {
        "projection_factor": _f,
        "factor_rank": _c,
        "curvature": "ekfac",
        "damping": "trace:0.1",
        "dtype": "int8",
    }
VARIANTS["LoGRA-dense f=4 gradients r=256"] = {
    "projection_factor": 4,
    "dense": True,
    "curvature": "gradients",
    "curvature_rank": 256,
    "damping": "trace",
}
VARIANTS["LoRIF f=4 c=1 gradients r=64"] = {
    "projection_factor": 4,
    "factor_rank": 1,
    "curvature": "gradients",
    "curvature_rank": 64,
    "damping": "trace",
}
for _damping in ("trace:0.01", "trace:0.5", "trace:1"):
    VARIANTS[f"LoRIF f=4 c=4 int8, damping {_damping}"] = {
        "projection_factor": 4,
        "factor_rank": 4,
        "damping": _damping,
    }
for _name, _overrides in VARIANTS.items():  # everything else is stored as bf16
    if "int8" not in _name and not _name.startswith("default"):  # int8 is the default dtype
        _overrides.setdefault("dtype", "bfloat16")


def full_gradients(model: torch.nn.Module, examples: list[Any]) -> torch.Tensor:
    """(N, P) per-example gradients of every tracked layer's weight, one example at a time."""
    layers = {layer.name for layer in find_layers(model)}
    params = [m.weight for n, m in model.named_modules() if n in layers]
    rows = []
    for example in examples:
        batch = collate([example.tokens], [example.loss_start])
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        grads = torch.autograd.grad(token_summed_loss(out.logits, batch.labels).sum(), params)
        rows.append(torch.cat([g.flatten() for g in grads]).double())
    return torch.stack(rows)


def exact_scores(train: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(Q, N) damped influence with λ = 0.1 × the mean nonzero eigenvalue of GᵀG."""
    gram = train @ train.T
    lam = 0.1 * float(torch.trace(gram)) / train.shape[0]
    projected = train @ queries.T  # (N, Q)
    solved = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), projected)
    return ((projected - gram @ solved) / lam).T, lam


def curvature_bytes(reader: IndexReader) -> tuple[float, float]:
    """Mean curvature bytes per layer: in the file (float32), and while building (float64
    accumulators: the eigensolver's basis and product, or A, S and the moment sums)."""
    config = reader.metadata["config"]
    file_bytes, build_bytes = [], []
    for i, s in enumerate(reader.layers):
        if config["curvature"] in ("factors", "gradients"):
            rank = reader.curvature(i).rank
            file_bytes.append(4 * (s.dim * rank + rank))
            build_bytes.append(8 * 2 * s.dim * min(s.dim, rank + config["oversample"]))
        else:
            file_bytes.append(4 * (s.d1**2 + s.d2**2 + s.d1 + s.d2 + s.dim))
            build_bytes.append(8 * (s.d1**2 + s.d2**2 + s.dim))
    return float(np.mean(file_bytes)), float(np.mean(build_bytes))


def indexed_scores(setting: Setting, overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    loaded = LoadedModel(
        setting.model, setting.tokenizer, identify(setting.model, setting.tokenizer, "fine-tuned")
    )
    overrides = dict(overrides)
    query_rank = overrides.pop("query_rank", None)  # the paper's rank-c query option
    tokens = len(setting.pool[0].tokens)
    config = IndexConfig(**{"max_tokens": tokens, "batch_size": 32, "device": "cpu", **overrides})
    path = folder / f"{abs(hash(str(overrides)))}.h5"
    began = time.perf_counter()
    build_index(loaded, setting.pool, path, config, progress=False)
    build_seconds = time.perf_counter() - began
    with IndexReader(path) as reader:
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        capture = ProjectedGradients(setting.model, projections)
        grads, _ = capture(collate([q.tokens for q in setting.queries], [0] * len(setting.queries)))
        curv = {s.name: reader.curvature(i) for i, s in enumerate(reader.layers)}
        hq = precondition(reader.layers, curv, grads, query_rank=query_rank)
        scores = score_block(reader.layout, reader.values(0, reader.n_examples), ScanQuery(hq))
        in_file, building = curvature_bytes(reader)
        return {
            "scores": scores.double(),
            "bytes_per_example": reader.bytes_per_example,
            "build_seconds": build_seconds,
            "curvature_bytes_per_layer": in_file,
            "curvature_build_bytes_per_layer": building,
        }


PEERS = (  # benchmarks/peers.py methods, in the peers' own environment (scripts/peers.sh)
    "kronfluence-identity",  # a gradient dot product: must reproduce ours
    "dattri-tracin",  # likewise
    "kronfluence-ekfac",
    "dattri-ekfac",
    "dattri-kfac",
    "logix-16",
    "logix-32",
    "logix-64",
)
PEER_NAMES = {
    "kronfluence-identity": "kronfluence identity (gradient dot product)",
    "dattri-tracin": "dattri-llm TracIn (gradient dot product)",
    "kronfluence-ekfac": "kronfluence EK-FAC",
    "dattri-ekfac": "dattri-llm EK-FAC",
    "dattri-kfac": "dattri-llm K-FAC",
    "logix-16": "logix LoGRA rank 16 (K-FAC)",
    "logix-32": "logix LoGRA rank 32 (K-FAC)",
    "logix-64": "logix LoGRA rank 64 (K-FAC)",
}


def export_setting(setting: Setting, folder: Path) -> None:
    """What benchmarks/peers.py reads: the fine-tuned model, the tokens, the tracked layers."""
    setting.model.save_pretrained(folder / "model")
    layers = [layer.name for layer in find_layers(setting.model)]
    data = {
        "pool": [e.tokens for e in setting.pool],
        "queries": [q.tokens for q in setting.queries],
        "layers": layers,
    }
    (folder / "setting.json").write_text(json.dumps(data))


def peer_scores(setting: Setting, python: Path, methods: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_setting(setting, folder)
        for method in methods:
            target = folder / f"{method}.npy"
            began = time.perf_counter()
            script = Path(__file__).with_name("peers.py")
            command = [str(python), str(script), "--setting", str(folder), "--method", method]
            done = subprocess.run([*command, "--out", str(target)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{method} failed:\n{done.stderr[-3000:]}")
                continue
            scores = torch.from_numpy(np.load(target)).double()
            out[PEER_NAMES[method]] = {
                "scores": scores,
                "build_seconds": time.perf_counter() - began,
                "peer": True,
            }
    return out


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy(), strict=True)])


def lds(scores: torch.Tensor, setting: Setting, rng: np.random.Generator) -> dict[str, float]:
    predicted = scores @ setting.masks.double().T  # (Q, M): summed scores of each subset
    actual = -setting.targets.T.double()  # (Q, M): lower loss = more helpful subset
    per_query = spearman_rows(predicted, actual)
    boots = [rng.choice(per_query, per_query.size).mean() for _ in range(1000)]
    return {
        "lds": float(per_query.mean()),
        "lds_low": float(np.percentile(boots, 2.5)),
        "lds_high": float(np.percentile(boots, 97.5)),
    }


def retrieval(scores: torch.Tensor, setting: Setting) -> dict[str, float]:
    ranks = []
    for query, row in setting.planted.items():
        order = torch.argsort(scores[query], descending=True).tolist()
        ranks.append(order.index(row) + 1)
    topics = [q.metadata["topic"] for q in setting.queries]
    top10 = torch.topk(scores, 10, dim=1).indices
    same = [
        np.mean([setting.pool[i].metadata["topic"] == topics[q] for i in top10[q].tolist()])
        for q in range(len(topics))
    ]
    return {
        "recall_at_1": float(np.mean([r == 1 for r in ranks])),
        "mrr": float(np.mean([1 / r for r in ranks])),
        "same_topic_p10": float(np.mean(same)),
    }


def fidelity(scores: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    top = torch.topk(scores, 10, dim=1).indices
    ref = torch.topk(reference, 10, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top, ref, strict=True)]
    return {
        "spearman_vs_exact": float(spearman_rows(scores, reference).mean()),
        "top10_overlap_vs_exact": float(np.mean(overlap)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path(".cache/bbc/model-300steps"))
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument("--subsets", type=int, default=64)
    parser.add_argument("--only", help="regular expression: run the matching variants only")
    parser.add_argument("--tokens", type=int, default=64, help="chunk length: 64 or 128")
    parser.add_argument(
        "--peers",
        nargs="*",
        help=f"peer methods to run in the same setting (default all: {', '.join(PEERS)})",
    )
    parser.add_argument("--peers-python", type=Path, default=Path(".venv-peers/bin/python"))
    args = parser.parse_args()
    setting = build_setting(args.model, args.held_out, args.subsets, chunk=args.tokens)
    variants = {
        name: overrides
        for name, overrides in VARIANTS.items()
        if args.only is None or re.search(args.only, name) or name == "LoGRA-dense f=4"
    }
    rng = np.random.default_rng(0)
    train = full_gradients(setting.model, setting.pool)
    query = full_gradients(setting.model, setting.queries)
    exact, lam = exact_scores(train, query)
    noise = torch.randn(exact.shape, generator=torch.Generator().manual_seed(1)).double()
    methods: dict[str, dict[str, Any]] = {
        "exact (full gradients)": {"scores": exact},
        "gradient dot product": {"scores": query @ train.T},
        "random": {"scores": noise},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in tqdm(variants.items(), desc="variants", unit="index"):
            methods[name] = indexed_scores(setting, overrides, Path(tmp))
    if args.peers is not None:
        methods.update(peer_scores(setting, args.peers_python, args.peers or list(PEERS)))
    dense = methods["LoGRA-dense f=4"]["scores"]
    rows = []
    for name, method in methods.items():
        scores = method["scores"]
        row = {
            "method": name,
            "bytes_per_example": method.get("bytes_per_example"),
            "build_seconds": method.get("build_seconds"),
            "curvature_bytes_per_layer": method.get("curvature_bytes_per_layer"),
            "curvature_build_bytes_per_layer": method.get("curvature_build_bytes_per_layer"),
            **lds(scores, setting, rng),
            **fidelity(scores, exact),
            **retrieval(scores, setting),
        }
        row["spearman_vs_logra_dense"] = float(spearman_rows(scores, dense).mean())
        rows.append(row)
    plot(rows, args.tokens)
    table = (
        f"Pool N = {len(setting.pool)} chunks of {args.tokens} tokens ({len(setting.planted)} planted "
        f"near-duplicates), {len(setting.queries)} queries, M = {len(setting.masks)} subset "
        f"models. Mean query loss: base {setting.base_query_loss:.1f}, fine-tuned on the pool "
        f"{setting.full_query_loss:.1f}. Exact damping λ = {lam:.3g}.\n\n"
    )
    table += (
        "| method | bytes/example | LDS (95% CI) | Spearman vs exact | top-10 overlap vs exact | "
        "Spearman vs LoGRA-dense | dup recall@1 | dup MRR | same-topic P@10 | build s | "
        "curvature KiB/layer (file / building) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        size = f"{r['bytes_per_example']:,}" if r["bytes_per_example"] else "—"
        build = f"{r['build_seconds']:.1f}" if r["build_seconds"] else "—"
        curvature = (
            f"{r['curvature_bytes_per_layer'] / 1024:,.0f} / "
            f"{r['curvature_build_bytes_per_layer'] / 1024:,.0f}"
            if r["curvature_bytes_per_layer"]
            else "—"
        )
        table += (
            f"| {r['method']} | {size} | {r['lds']:.3f} ({r['lds_low']:.3f}–{r['lds_high']:.3f}) | "
            f"{r['spearman_vs_exact']:.3f} | {r['top10_overlap_vs_exact']:.2f} | "
            f"{r['spearman_vs_logra_dense']:.3f} | {r['recall_at_1']:.2f} | {r['mrr']:.2f} | "
            f"{r['same_topic_p10']:.2f} | {build} | {curvature} |\n"
        )
    write_result(
        "quality" if args.tokens == 64 else f"quality-{args.tokens}",
        {
            "rows": rows,
            "lambda": lam,
            "subsets": len(setting.masks),
            "base_query_loss": setting.base_query_loss,
            "full_query_loss": setting.full_query_loss,
        },
        table,
    )


def _family(name: str) -> str:
    if "int8" in name:
        return "EK-FAC, raw factors, int8"
    if "ekfac whitened" in name:
        return "EK-FAC, whitened factors"
    if "kfac" in name and "ekfac" not in name:
        return "K-FAC, raw factors"
    if "ekfac" in name or name.startswith("default"):
        return "EK-FAC, raw factors"
    if "gradients" in name:
        return "Woodbury, sketched from dense gradients"
    return "Woodbury of the stored factors (paper)"


FAMILY_COLORS = {
    "Woodbury of the stored factors (paper)": "tab:red",
    "Woodbury, sketched from dense gradients": "tab:gray",
    "K-FAC, raw factors": "tab:green",
    "EK-FAC, raw factors": "tab:blue",
    "EK-FAC, whitened factors": "tab:orange",
    "EK-FAC, raw factors, int8": "tab:purple",
}


def plot(rows: list[dict[str, Any]], tokens: int) -> None:
    """LDS against bytes per example: one colour per curvature family, references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import RESULTS

    fig, ax = plt.subplots(figsize=(8, 5))
    seen: set[str] = set()
    for r in rows:
        if not r["bytes_per_example"]:
            continue
        family = _family(r["method"])
        ax.errorbar(
            r["bytes_per_example"],
            r["lds"],
            yerr=[[r["lds"] - r["lds_low"]], [r["lds_high"] - r["lds"]]],
            fmt="o",
            capsize=2,
            markersize=4,
            color=FAMILY_COLORS[family],
            alpha=0.8,
            label=None if family in seen else family,
        )
        seen.add(family)
        if r["method"].startswith("default ("):
            ax.annotate(
                "default",
                (r["bytes_per_example"], r["lds"]),
                fontsize=8,
                xytext=(6, -10),
                textcoords="offset points",
                weight="bold",
            )
    references = ("exact", "gradient dot", "EK-FAC", "logix")
    for r in rows:
        name = r["method"]
        if r["bytes_per_example"] or not any(key in name for key in references):
            continue
        if "identity" in name or "TracIn" in name:  # the same line as our dot product
            continue
        ax.axhline(r["lds"], linestyle="--", linewidth=0.7, color="grey")
        ax.annotate(
            name,
            (1.01, r["lds"]),
            xycoords=ax.get_yaxis_transform(),
            fontsize=6.5,
            color="dimgrey",
            va="center",
        )
    ax.set_xscale("log")
    ax.set_xlabel("index bytes per example (log)")
    ax.set_ylabel("LDS (mean Spearman, 95% CI)")
    ax.set_title(f"Quality vs storage (BBC, fine-tuning regime, {tokens}-token chunks)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if tokens == 64 else f"_{tokens}"
    fig.savefig(RESULTS / f"quality_vs_storage{suffix}.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
