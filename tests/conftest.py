import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import json  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny Llama and its tokenizer saved as a local Hugging Face model directory."""
    import torch
    from models import tiny_llama, tiny_tokenizer

    path = tmp_path_factory.mktemp("model")
    tiny_llama(dtype=torch.float32).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    from models import random_texts

    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(path, "w") as handle:
        for i, text in enumerate(random_texts(40, seed=11)):
            handle.write(json.dumps({"id": f"doc{i}", "text": text, "topic": f"t{i % 3}"}) + "\n")
    return path


def build_small_index(model_dir, data_file, out, *extra):
    """The CLI build most server-side tests start from (tiny model, f = 2, ≤ 10 tokens)."""
    from indexer.cli import main

    args = [
        "build",
        "--model",
        str(model_dir),
        "--data",
        str(data_file),
        "--out",
        str(out),
        "--projection-factor",
        "2",
        "--max-tokens",
        "10",
        "--quiet",
        *extra,
    ]
    assert main(args) == 0
    return out
