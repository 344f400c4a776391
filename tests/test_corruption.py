"""Corrupt, truncated and foreign index files give clear errors."""

import shutil

import h5py
import pytest

from lorif_serve.indexer import IndexConfig, IndexFileError, IndexReader, build_index
from lorif_serve.indexer.cli import main
from lorif_serve.indexer.inputs.examples import make_examples
from lorif_serve.indexer.inputs.records import Record
from lorif_serve.indexer.store import schema
from tests.tiny import loaded, random_texts


@pytest.fixture(scope="module")
def good_index(tmp_path_factory):
    model = loaded()
    records = [Record(f"d{i}", "mem", text=t) for i, t in enumerate(random_texts(20, seed=2))]
    examples = make_examples(iter(records), model.tokenizer, 10)[0]
    path = tmp_path_factory.mktemp("good") / "good.h5"
    build_index(
        model, examples, path, IndexConfig(projection_factor=2, curvature_rank=4), progress=False
    )
    return path


@pytest.fixture
def copy(good_index, tmp_path):
    target = tmp_path / "copy.h5"
    shutil.copy(good_index, target)
    return target


def test_truncated_file(copy):
    size = copy.stat().st_size
    with open(copy, "r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(IndexFileError, match="truncated|not a readable HDF5"):
        IndexReader(copy)
    assert main(["verify", str(copy)]) == 1


def test_flipped_factor_bytes_fail_verify(copy, capsys):
    with IndexReader(copy) as reader:
        offset = reader.factor_dataset.offset + 10
    with open(copy, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with IndexReader(copy) as reader:  # opening is cheap and does not hash
        assert reader.verify() == [f"checksum mismatch in {schema.FACTORS}"]
    assert main(["verify", str(copy)]) == 1
    assert "checksum mismatch in factors" in capsys.readouterr().err


def test_wrong_format_version(copy):
    with h5py.File(copy, "r+") as f:
        f.attrs[schema.ATTR_VERSION] = 999
    with pytest.raises(IndexFileError, match="format version 999"):
        IndexReader(copy)


def test_missing_dataset(copy):
    with h5py.File(copy, "r+") as f:
        del f[schema.EXAMPLE_IDS]
    with pytest.raises(IndexFileError, match="missing dataset"):
        IndexReader(copy)


def test_not_an_index(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"hello")
    with pytest.raises(IndexFileError, match="not a readable HDF5"):
        IndexReader(path)
    with pytest.raises(IndexFileError, match="no such index"):
        IndexReader(tmp_path / "absent.h5")
