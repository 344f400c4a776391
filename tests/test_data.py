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
    assert examples[0].metadata["topic"] == "business" and examples[0].text.startswith("market")
    assert examples[1].metadata["doc_id"] == "long" and examples[1].metadata["chunk"] == 1
    pc = examples[-1]
    assert pc.loss_start == 2 and len(pc.tokens) == 4
    reasons = [f"{b.source.split(':')[-1]} {b.reason}" for b in bad]
    assert reasons == [
        "3 invalid JSON at column 2 (Expecting property name enclosed in double quotes)",
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
    assert [(e.id, e.metadata.get("folder")) for e in examples] == [
        ("sport/001#0", "sport"),
        ("tech#0", None),
    ]
    assert len(bad) == 1 and "bad.txt" in bad[0].source and "UTF-8" in bad[0].reason


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["market bank shares", "vote party"], "label": [1, 2]})
    ds.save_to_disk(str(tmp_path / "ds"))
    examples, bad = make_examples(read_records(tmp_path / "ds"), TOKENIZER, max_tokens=10)
    assert [(e.id, e.metadata["label"]) for e in examples] == [("row0#0", 1), ("row1#0", 2)]
    assert bad == []


def test_missing_path_and_no_examples(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "absent")
    path = write_jsonl(tmp_path / "empty.jsonl", [json.dumps({"text": "market"})])
    with pytest.raises(DataError, match="no usable examples; first problem: .*fewer than 2 tokens"):
        make_examples(read_records(path), TOKENIZER, max_tokens=10)


def chunk(text, max_tokens):
    from lorif_serve.indexer.inputs.records import Record

    examples, bad = make_examples(iter([Record("d", "mem", text=text)]), TOKENIZER, max_tokens)
    assert bad == []
    return examples


def test_chunks_end_at_a_sentence_inside_the_window():
    text = "the market rose more less more. the film star said the team will win the match"
    examples = chunk(text, 8)  # window: the last 2 tokens of each 8-token budget
    assert examples[0].text == "the market rose more less more."  # 7 tokens, then a sentence
    assert examples[1].text.startswith("the film star")


def test_a_short_tail_is_folded_into_the_previous_chunk():
    words = " ".join(["market"] * 41)  # 40 + 1 at 20: a 1-token tail
    sizes = [len(e.tokens) for e in chunk(words, 20)]
    assert sizes == [20, 10, 11]  # 20 + 1 do not fit in 20: the last two re-cut mid-way
    merged = chunk("the market rose more. the film star said the team", 12)
    assert [len(e.tokens) for e in merged] == [11]  # fits in one chunk: merged, no split


def test_chunk_metadata_names_the_document_and_span():
    text = "Election Report\nthe vote party will win. the minister said more"
    examples = chunk(text, 6)
    for i, example in enumerate(examples):
        meta = example.metadata
        assert meta["doc_id"] == "d" and meta["chunk"] == i
        assert meta["title"] == "Election Report"
        assert text[meta["span"][0] : meta["span"][1]] == example.text
        assert example.text == example.text.strip()


@pytest.mark.parametrize("max_tokens", [4, 7, 16, 33])
def test_chunks_cover_every_token_within_the_budget(max_tokens):
    from tests.tiny import random_texts

    text = ". ".join(random_texts(12, seed=3))
    examples = chunk(text, max_tokens)
    tokens = [t for e in examples for t in e.tokens]
    assert tokens == TOKENIZER(text, add_special_tokens=False)["input_ids"]
    assert all(len(e.tokens) <= max_tokens for e in examples)
    assert len(examples) == 1 or len(examples[-1].tokens) >= max(2, max_tokens // 4)
