"""Peer attribution libraries on a quality setting exported by ``benchmarks.quality --peers``.

Runs inside the peers' own virtual environment (``scripts/peers.sh`` builds ``.venv-peers``;
they are never dependencies of this project), imports nothing of ours, and writes one
(queries, pool) score matrix, with our sign convention (larger = the example lowers the
query's loss), to ``--out``:

    .venv-peers/bin/python benchmarks/peers.py --setting DIR --method kronfluence-ekfac --out s.npy

The setting directory holds ``model/`` (the fine-tuned model, ``save_pretrained``) and
``setting.json`` (pool and query token ids, the tracked module names). Every method uses
the same model, tokens, tracked linears and token-summed cross-entropy.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-summed causal cross-entropy of the batch (every token after the first)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["input_ids"][:, 1:].reshape(-1),
        reduction="sum",
    )


def rows(tokens: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "input_ids": torch.tensor(t, dtype=torch.long),
            "attention_mask": torch.ones(len(t), dtype=torch.long),
            "labels": torch.tensor(t, dtype=torch.long),
        }
        for t in tokens
    ]


def kronfluence_scores(
    model: torch.nn.Module, setting: dict[str, Any], strategy: str
) -> np.ndarray:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    modules = setting["layers"]

    class LanguageModelTask(Task):
        def compute_train_loss(
            self, batch: Any, model: torch.nn.Module, sample: bool = False
        ) -> torch.Tensor:
            if not sample:
                return summed_loss(model, batch)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            with torch.no_grad():  # the true Fisher: labels drawn from the model itself
                sampled = torch.multinomial(torch.softmax(logits, dim=-1), 1).flatten()
            return torch.nn.functional.cross_entropy(logits, sampled, reduction="sum")

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
            return summed_loss(model, batch)

        def get_influence_tracked_modules(self) -> list[str]:
            return modules

        def get_attention_mask(self, batch: Any) -> torch.Tensor:
            return batch["attention_mask"]

    task = LanguageModelTask()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as folder:
        analyzer = Analyzer("quality", model=model, task=task, cpu=True, output_dir=folder)
        train, queries = rows(setting["pool"]), rows(setting["queries"])
        analyzer.fit_all_factors(
            "factors",
            dataset=train,
            per_device_batch_size=16,
            factor_args=FactorArguments(strategy=strategy),
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            "scores",
            factors_name="factors",
            query_dataset=queries,
            train_dataset=train,
            per_device_query_batch_size=8,
            per_device_train_batch_size=16,
            score_args=ScoreArguments(),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]  # (Q, N)
    return scores.double().numpy()


def dattri_scores(model: torch.nn.Module, setting: dict[str, Any], method: str) -> np.ndarray:
    import dattri_llm
    from dattri_llm.attribution.arguments import AttributionArguments

    attributors = {
        "ekfac": "EKFACAttributor",
        "kfac": "KFACAttributor",
        "tracin": "TracInAttributor",
    }
    attributor_class = getattr(dattri_llm, attributors[method])
    task = dattri_llm.AttributionTask(loss_func=summed_loss, model=model)
    pattern = "|".join(re.escape(name) for name in setting["layers"])
    train, queries = rows(setting["pool"]), rows(setting["queries"])
    with tempfile.TemporaryDirectory() as folder:
        args = AttributionArguments(output_dir=folder, per_device_train_batch_size=16)
        attributor = attributor_class(args, task=task)
        extra = {} if method == "tracin" else {"damping": 0.1, "relative_damping": True}
        result = attributor.attribute(
            train,
            queries,
            hook_config=dattri_llm.HookManagerConfig(linear_io=[f"^({pattern})$"]),
            **extra,
        )
        hashes, matrix = result.agnostic_matrix()  # (unique train rows, Q)
    order = {h: i for i, h in enumerate(hashes)}
    picked = [order[dattri_llm.hash_sample({"input_ids": row["input_ids"]})] for row in train]
    return matrix[picked].T.double().numpy()


def logix_scores(model: torch.nn.Module, setting: dict[str, Any], rank: int) -> np.ndarray:
    import logix
    import yaml

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "root_dir": folder,
                    "logging": {
                        "flush_threshold": 1_000_000_000,
                        "cpu_offload": True,
                        "log_dtype": "float32",
                    },
                    "lora": {"init": "random", "rank": rank},
                }
            )
        )
        run = logix.init(project="quality", config=str(config))
        run.watch(model, name_filter=setting["layers"])
        scheduler = logix.LogIXScheduler(run, lora="random", hessian="kfac", save="grad")
        pool = setting["pool"]
        for _ in scheduler:
            for start in range(0, len(pool), 16):
                ids = [str(i) for i in range(start, min(start + 16, len(pool)))]
                batch = _batch(pool[start : start + 16])
                with run(data_id=ids):
                    model.zero_grad()
                    summed_loss(model, batch).backward()
        run.finalize()
        run.eval()
        queries = setting["queries"]
        blocks = []
        for start in range(0, len(queries), 8):
            ids = [f"q{i}" for i in range(start, min(start + 8, len(queries)))]
            with run(data_id=ids):
                model.zero_grad()
                summed_loss(model, _batch(queries[start : start + 8])).backward()
            test_log = run.get_log()
            result = run.compute_influence_all(test_log, run.build_log_dataloader())
            blocks.append(_in_pool_order(result, len(pool)))
    return np.concatenate(blocks)


def _in_pool_order(result: dict[str, Any], n: int) -> np.ndarray:
    influence = result["influence"]
    if isinstance(influence, torch.Tensor):
        influence = influence.double().numpy()
    train_ids = result.get("tgt_ids")
    if train_ids is None:
        return np.asarray(influence)
    flat = [
        i for group in train_ids for i in (group if isinstance(group, list | tuple) else [group])
    ]
    order = np.argsort([int(i) for i in flat])
    return np.asarray(influence)[:, order][:, :n]


def _batch(tokens: list[list[int]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor(tokens, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setting", type=Path, required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    setting = json.loads((args.setting / "setting.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(args.setting / "model").eval()
    library, _, variant = args.method.partition("-")
    if library == "kronfluence":
        scores = kronfluence_scores(model, setting, variant)
    elif library == "dattri":
        scores = dattri_scores(model, setting, variant)
    elif library == "logix":
        scores = logix_scores(model, setting, int(variant))
    else:
        raise SystemExit(f"unknown method {args.method}")
    np.save(args.out, scores)


if __name__ == "__main__":
    main()
