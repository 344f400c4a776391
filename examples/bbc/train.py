"""Train a byte-level BPE tokenizer and a ~1.6 M-parameter Llama on the BBC articles."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 8192


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def chunk_tokens(tokenizer: PreTrainedTokenizerFast, texts: list[str], length: int) -> torch.Tensor:
    """Full-length chunks of each text (as the indexer cuts them); short tails are dropped."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows += [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
    return torch.tensor(rows, dtype=torch.long)


def small_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def mean_loss(model: LlamaForCausalLM, chunks: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(chunks), batch):
            ids = chunks[start : start + batch]
            total += float(model(input_ids=ids, labels=ids).loss) * len(ids)
    return total / max(1, len(chunks))


def train(
    train_texts: list[str], val_texts: list[str], out: Path, steps: int, seed: int = 0
) -> dict[str, float]:
    """Train and save model + tokenizer to ``out``; returns losses."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(train_texts)
    chunks = chunk_tokens(tokenizer, train_texts, 128)
    val = chunk_tokens(tokenizer, val_texts, 128)
    model = small_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    order = random.Random(seed)
    model.train()
    bar = tqdm(range(steps), desc="train demo model", unit="step")
    for _ in bar:
        ids = chunks[order.sample(range(len(chunks)), 32)]
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    losses = {"val_loss": mean_loss(model, val), "unigram_entropy": unigram_entropy(chunks)}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return losses


def unigram_entropy(chunks: torch.Tensor) -> float:
    counts = torch.bincount(chunks.flatten(), minlength=VOCAB_SIZE).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum()) if math.isfinite(float(p.sum())) else float("nan")
