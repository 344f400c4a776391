"""The fine-tuning regime in which attribution quality is measured on CPU.

Base: the demo model (trained on the training split). Pool: 256 held-out chunks (64 or 128
tokens),
8 of them planted near-duplicates of queries (half their tokens resampled). Queries: 32
other chunks of the same held-out articles. M random 50 % subsets of the pool; the base is
fine-tuned on each (AdamW lr 3e-4, 3 epochs, batch 16, same seed and order) and the
target is each query's summed loss. Attribution is computed at the model fine-tuned on
the whole pool.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lorif_serve.indexer.core.gradients import collate, token_summed_loss
from lorif_serve.indexer.inputs.examples import Example
from lorif_serve.indexer.inputs.lm import load_model

CHUNK = 64  # the default chunk length in tokens; the second setting uses 128
POOL, QUERIES, PLANTED = 256, 32, 8


@dataclass
class Setting:
    model: torch.nn.Module  # fine-tuned on the whole pool
    tokenizer: object
    pool: list[Example]
    queries: list[Example]
    planted: dict[int, int]  # query index → pool row of its near-duplicate
    masks: torch.Tensor  # (M, N) bool subsets
    targets: torch.Tensor  # (M, Q) summed query loss of each subset model
    base_query_loss: float
    full_query_loss: float


def _chunks(tokenizer, held_out: Path, chunk: int) -> list[tuple[str, list[int]]]:  # type: ignore[no-untyped-def]
    out = []
    for line in held_out.read_text(encoding="utf-8").splitlines():
        article = json.loads(line)
        ids = tokenizer(article["text"], add_special_tokens=False)["input_ids"]
        out += [
            (article["topic"], ids[i : i + chunk]) for i in range(0, len(ids) - chunk + 1, chunk)
        ]
    return out


def _example(name: str, topic: str, tokens: list[int], tokenizer) -> Example:  # type: ignore[no-untyped-def]
    return Example(name, tokenizer.decode(tokens), tokens, 0, {"topic": topic})


def _losses(model: torch.nn.Module, examples: list[Example]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        batch = collate([e.tokens for e in examples], [0] * len(examples))
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return token_summed_loss(out.logits, batch.labels)


def fine_tune(base: torch.nn.Module, examples: list[Example], seed: int = 0) -> torch.nn.Module:
    """AdamW lr 3e-4, 3 epochs, batch 16, loss per token; the same order for every subset."""
    model = copy.deepcopy(base)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    order = random.Random(seed)
    for _ in range(3):
        rows = list(range(len(examples)))
        order.shuffle(rows)
        for start in range(0, len(rows), 16):
            chunk = [examples[i] for i in rows[start : start + 16]]
            batch = collate([e.tokens for e in chunk], [0] * len(chunk))
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            loss = token_summed_loss(out.logits, batch.labels).mean() / len(chunk[0].tokens)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _digest(pool: list[Example], queries: list[Example], masks: torch.Tensor) -> str:
    hasher = hashlib.sha256(
        json.dumps([[e.tokens for e in pool], [q.tokens for q in queries]]).encode()
    )
    hasher.update(masks.numpy().tobytes())
    return hasher.hexdigest()[:16]


def build_setting(
    model_dir: Path, held_out: Path, subsets: int, seed: int = 0, chunk: int = CHUNK
) -> Setting:
    """The setting; the subset models' targets are cached next to the model (they cost
    ≈ 3.5 s per subset model and depend only on the model, the data, M and the seed)."""
    loaded = load_model(model_dir, "cpu")
    tokenizer, base = loaded.tokenizer, loaded.model
    rng = random.Random(seed)
    chunks = _chunks(tokenizer, held_out, chunk)
    rng.shuffle(chunks)
    queries = [
        _example(f"query{i}", t, ids, tokenizer) for i, (t, ids) in enumerate(chunks[:QUERIES])
    ]
    pool = [
        _example(f"pool{i}", t, ids, tokenizer)
        for i, (t, ids) in enumerate(chunks[QUERIES : QUERIES + POOL - PLANTED])
    ]
    vocab = len(tokenizer)
    planted = {}
    for q in range(PLANTED):
        tokens = list(queries[q].tokens)
        for position in rng.sample(range(chunk), chunk // 2):
            tokens[position] = rng.randrange(vocab)
        planted[q] = len(pool)
        pool.append(_example(f"planted{q}", queries[q].metadata["topic"], tokens, tokenizer))
    generator = torch.Generator().manual_seed(seed)
    masks = torch.stack(
        [torch.randperm(POOL, generator=generator) < POOL // 2 for _ in range(subsets)]
    )
    key = f"m{subsets}-s{seed}-t{chunk}-{_digest(pool, queries, masks)}"
    cache = model_dir / f"lds-targets-{key}.pt"
    if cache.exists():
        stacked = torch.load(cache, weights_only=True)
    else:
        targets = []
        for mask in tqdm(masks, desc="fine-tune subset models", unit="model"):
            subset = [pool[i] for i in torch.nonzero(mask).flatten().tolist()]
            targets.append(_losses(fine_tune(base, subset, seed), queries))
        stacked = torch.stack(targets)
        torch.save(stacked, cache)
    full = fine_tune(base, pool, seed)
    return Setting(
        model=full,
        tokenizer=tokenizer,
        pool=pool,
        queries=queries,
        planted=planted,
        masks=masks,
        targets=stacked,
        base_query_loss=float(_losses(base, queries).mean()),
        full_query_loss=float(_losses(full, queries).mean()),
    )
