"""Tiny causal LMs built from a config in code (no hub, no weights on disk)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 97


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_gpt2(seed: int = 0, dtype: torch.dtype = torch.float64) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).to(dtype).eval()


def random_sequences(count: int, seed: int = 1, low: int = 3, high: int = 12) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=generator)
    return [torch.randint(1, VOCAB, (int(n),), generator=generator).tolist() for n in lengths]


WORDS = (
    "the a market bank shares rose fell film star music award election minister vote party "
    "match goal team player season phone software network users data court law police report "
    "year week day new old big small good bad first last more less said will would could"
).split()


def tiny_tokenizer():
    """A word-level fast tokenizer over WORDS (≤ VOCAB ids), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[UNK]")


def random_texts(count: int, seed: int = 0, low: int = 4, high: int = 30) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(count):
        n = int(torch.randint(low, high, (1,), generator=generator))
        picks = torch.randint(0, len(WORDS), (n,), generator=generator).tolist()
        texts.append(" ".join(WORDS[i] for i in picks))
    return texts


def loaded(factory=None, dtype=torch.float64):
    from lorif_serve.indexer.inputs.lm import LoadedModel, identify

    model = (factory or tiny_llama)(dtype=dtype)
    tokenizer = tiny_tokenizer()
    return LoadedModel(model, tokenizer, identify(model, tokenizer, "tiny"))
