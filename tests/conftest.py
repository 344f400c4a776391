"""Session fixtures: a tiny saved model, a small JSONL corpus, the API test index."""

import json

import pytest
import torch

from tests.builders import build_api_index
from tests.tiny import random_texts, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny Llama and its tokenizer saved as a local Hugging Face model directory."""
    path = tmp_path_factory.mktemp("model")
    tiny_llama(dtype=torch.float32).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(path, "w") as handle:
        for i, text in enumerate(random_texts(40, seed=11)):
            handle.write(json.dumps({"id": f"doc{i}", "text": text, "topic": f"t{i % 3}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def index_path(tmp_path_factory):
    """The HTTP tests' index (tests.builders.build_api_index), built once per session."""
    return build_api_index(tmp_path_factory.mktemp("api") / "api.h5")


@pytest.fixture(scope="session")
def int8_index_path(tmp_path_factory):
    """The same corpus and settings as ``index_path``, stored as int8 rows."""
    return build_api_index(tmp_path_factory.mktemp("api8") / "api8.h5", dtype="int8")
