"""Data readers: JSONL, text directories, saved datasets; chunking; bad records."""

import json

import pytest

from lorif_serve.errors import DataError
from lorif_serve.indexer.inputs.examples import make_examples
from lorif_serve.indexer.inputs.records import read_records
from tests.tiny import tiny_tokenizer

TOKENIZER = tiny_tokenizer()


def write_jsonl(path, lines):
    path.write_bytes(
        b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    )
    return path


def test_jsonl_chunks_and_bad_records_are_reported(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"id": "long", "text": " ".join(["market"] * 25), "topic": "business"}),
            json.dumps({"text": "film star music"}),
            "{not json",
            json.dumps({"text": ""}),
            json.dumps({"title": "no text"}),
            b'{"text": "\xff\xfe"}',
            json.dumps({"id": "long", "text": "a duplicate id"}),
            json.dumps({"prompt": "the market", "completion": "shares rose", "id": "pc"}),
        ],
    )
    examples, bad = make_examples(read_records(path), TOKENIZER, max_tokens=10)
    ids = [e.id for e in examples]
    assert ids == ["long#0", "long#1", "long#2", "d:2#0", "pc"]
    assert [len(e.tokens) for e in examples[:3]] == [10, 10, 5]
    assert examples[0].metadata == {"topic": "business"} and examples[0].text.startswith("market")
    pc = examples[-1]
    assert pc.loss_start == 2 and len(pc.tokens) == 4
    reasons = [f"{b.source.split(':')[-1]} {b.reason}" for b in bad]
    assert reasons == [
        "3 invalid JSON (Expecting property name enclosed in double quotes)",
        "4 'text' is empty or not a string",
        "5 missing field: need 'text' or 'completion'",
        "6 not valid UTF-8",
        "7 duplicate id 'long'",
    ]
    with pytest.raises(DataError, match="d.jsonl:3: invalid JSON"):
        make_examples(read_records(path), TOKENIZER, max_tokens=10, on_bad="fail")


def test_text_directory(tmp_path):
    (tmp_path / "sport").mkdir()
    (tmp_path / "sport" / "001.txt").write_text("match goal team")
    (tmp_path / "tech.txt").write_text("phone software")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xff")
    examples, bad = make_examples(read_records(tmp_path), TOKENIZER, max_tokens=10)
    assert [(e.id, e.metadata) for e in examples] == [
        ("sport/001#0", {"folder": "sport"}),
        ("tech#0", {}),
    ]
    assert len(bad) == 1 and "bad.txt" in bad[0].source and "UTF-8" in bad[0].reason


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["market bank shares", "vote party"], "label": [1, 2]})
    ds.save_to_disk(str(tmp_path / "ds"))
    examples, bad = make_examples(read_records(tmp_path / "ds"), TOKENIZER, max_tokens=10)
    assert [(e.id, e.metadata) for e in examples] == [
        ("row0#0", {"label": 1}),
        ("row1#0", {"label": 2}),
    ]
    assert bad == []


def test_missing_path_and_no_examples(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "absent")
    path = write_jsonl(tmp_path / "empty.jsonl", [json.dumps({"text": "market"})])
    with pytest.raises(DataError, match="no usable examples; first problem: .*fewer than 2 tokens"):
        make_examples(read_records(path), TOKENIZER, max_tokens=10)
