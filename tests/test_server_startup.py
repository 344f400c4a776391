"""A corrupt or wrong index never becomes ready, and the server never writes to the index."""

import hashlib
import shutil
import subprocess
import sys

import h5py
import pytest
import torch

from lorif_serve.errors import StartupError
from lorif_serve.indexer import IndexFileError, IndexReader
from lorif_serve.indexer.store import schema
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.settings import ServerSettings
from tests.builders import build_small_index


@pytest.fixture(scope="module")
def good(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("startup") / "good.h5"
    build_small_index(model_dir, data_file, out)
    return out


@pytest.fixture
def copy(good, tmp_path):
    target = tmp_path / "copy.h5"
    shutil.copy(good, target)
    return target


def load(index, model_dir, **extra):
    return load_service(
        ServerSettings(index=index, model=model_dir, device="cpu", **extra), ServerMetrics()
    )


def flip_factor_byte(path):
    with IndexReader(path) as reader:
        offset = reader.factor_dataset.offset + 100
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x55]))


def test_truncated(copy, model_dir):
    with open(copy, "r+b") as handle:
        handle.truncate(copy.stat().st_size - 64)
    with pytest.raises(IndexFileError, match="truncated|not a readable"):
        load(copy, model_dir)


def test_flipped_bytes_caught_by_verify_on_start(copy, model_dir):
    flip_factor_byte(copy)
    with pytest.raises(StartupError, match="checksum mismatch in factors"):
        load(copy, model_dir, verify_on_start=True)


def test_missing_dataset_and_wrong_version(copy, model_dir):
    with h5py.File(copy, "r+") as f:
        f.attrs[schema.ATTR_VERSION] = 7
    with pytest.raises(IndexFileError, match="format version 7"):
        load(copy, model_dir)
    with h5py.File(copy, "r+") as f:
        f.attrs[schema.ATTR_VERSION] = schema.FORMAT_VERSION
        del f[schema.EXAMPLE_TEXT]
    with pytest.raises(IndexFileError, match="missing dataset"):
        load(copy, model_dir)


def test_index_for_another_model(good, tmp_path):
    from tests.tiny import tiny_llama, tiny_tokenizer

    other = tmp_path / "other"
    tiny_llama(seed=5, dtype=torch.float32).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    with pytest.raises(StartupError, match="differing: weights_hash"):
        load(good, other)


def test_command_line_refuses_with_the_reason(copy, model_dir):
    flip_factor_byte(copy)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--index",
            str(copy),
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--verify-on-start",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "checksum mismatch in factors" in result.stderr and "Traceback" not in result.stderr


def test_serving_never_writes_to_the_index(good, model_dir):
    from fastapi.testclient import TestClient

    from lorif_serve.server.app import create_app

    before = hashlib.sha256(good.read_bytes()).hexdigest(), good.stat().st_mtime_ns
    settings = ServerSettings(index=good, model=model_dir, device="cpu", residency="disk")
    service = load_service(settings, ServerMetrics())
    assert service.reader._file.mode == "r"
    with TestClient(create_app(settings, service)) as client:
        for _ in range(3):
            assert (
                client.post("/v1/attributions", json={"completion": "market rose"}).status_code
                == 200
            )
    service.reader.close()
    assert (hashlib.sha256(good.read_bytes()).hexdigest(), good.stat().st_mtime_ns) == before
