"""Metadata filters: the filtered top-k equals brute force over the matching rows."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lorif_serve.client.protocol import AnyOf, Prefix
from lorif_serve.indexer import IndexReader
from lorif_serve.indexer.store import schema
from lorif_serve.server.filters import FieldColumns, MaskCache, canonical
from lorif_serve.server.kernels.build import load_kernel
from tests.builders import brute_force, make_app

QUERY = ("the market", "shares rose")


def _metadata(path):
    with IndexReader(path) as reader:
        metas = reader.dataset(schema.EXAMPLE_METADATA).asstr()[...]
        return [json.loads(m) for m in metas], reader.example_ids()


def _expected(path, fake, keep, k):
    scores, ids = brute_force(path, fake, [QUERY])
    rows = [i for i in range(len(ids)) if keep(i)]
    picked = sorted(rows, key=lambda i: (-float(scores[0, i]), i))[:k]
    worst = sorted(rows, key=lambda i: (float(scores[0, i]), i))[:k]
    return picked, worst


def _kernels():
    status = load_kernel()
    if status.kernel is None:
        return ["torch"]
    return ["torch", "fused", *(["bounded"] if status.kernel.has_bounded else [])]


@pytest.mark.parametrize("residency", ["ram", "disk"])
@pytest.mark.parametrize("kernel", _kernels())
def test_filtered_topk_equals_brute_force_over_matching_rows(int8_index_path, residency, kernel):
    metas, ids = _metadata(int8_index_path)
    app, fake = make_app(int8_index_path, residency, 16, scan_kernel=kernel)
    cases = {
        "eq": ({"topic": "t1"}, lambda i: metas[i]["topic"] == "t1"),
        "in": ({"topic": {"in": ["t0", "t2"]}}, lambda i: metas[i]["topic"] in ("t0", "t2")),
        "prefix": ({"id": {"prefix": "doc1"}}, lambda i: ids[i].startswith("doc1")),
        "both": (
            {"topic": "t2", "chunk": 0},
            lambda i: metas[i]["topic"] == "t2" and metas[i]["chunk"] == 0,
        ),
        "few": ({"id": {"in": ["doc3#0", "doc5#0"]}}, lambda i: ids[i] in ("doc3#0", "doc5#0")),
        "none": ({"topic": "nope"}, lambda i: False),
    }
    queries = [
        {"prompt": QUERY[0], "completion": QUERY[1], "top_k": 6, "opponents": True, "filter": f}
        for f, _ in cases.values()
    ]
    unfiltered = {"prompt": QUERY[0], "completion": QUERY[1], "top_k": 6}
    with TestClient(app) as client:
        batch = client.post("/v1/attributions", json={"queries": [*queries, unfiltered]})
    assert batch.status_code == 200, batch.text
    answers = batch.json()["batch"]
    for (name, (_, keep)), answer in zip(cases.items(), answers, strict=False):
        top, bottom = _expected(int8_index_path, fake, keep, 6)
        assert [r["index"] for r in answer["results"]] == top, name
        assert [r["index"] for r in answer["opponents"]] == bottom, name
        assert answer["query"]["matching"] == sum(keep(i) for i in range(len(ids)))
    plain, _ = _expected(int8_index_path, fake, lambda i: True, 6)
    assert [r["index"] for r in answers[-1]["results"]] == plain
    assert "matching" not in answers[-1]["query"]


def test_unknown_field_is_422_and_fields_are_listed(index_path):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        bad = client.post(
            "/v1/attributions", json={"completion": "vote", "filter": {"colour": "red"}}
        )
        empty = client.post("/v1/attributions", json={"completion": "vote", "filter": {}})
        wrong = client.post(
            "/v1/attributions", json={"completion": "vote", "filter": {"topic": {"in": []}}}
        )
        info = client.get("/v1/index").json()
    assert bad.status_code == 422 and "colour" in bad.json()["detail"]
    assert "topic" in bad.json()["detail"] and "Traceback" not in bad.text
    assert empty.status_code == 422 and wrong.status_code == 422
    fields = {f["name"]: f for f in info["filter_fields"]}
    assert fields["id"]["kind"] == "id"
    assert fields["topic"] == {
        "name": "topic",
        "kind": "string",
        "distinct": 3,
        "values": ["t0", "t1", "t2"],
    }
    assert "span" not in fields  # a list: not filterable
    assert fields["chunk"]["kind"] == "number"


def test_columns_keep_types_apart_and_masks_are_cached():
    metas = [{"n": 1}, {"n": 1.5}, {"n": True}, {"n": "1"}, {}, {"n": [1]}, {"m": 2}]
    columns = FieldColumns([f"r{i}" for i in range(len(metas))], metas)
    assert "n" not in columns.columns  # one row holds a list: the field is not filterable
    columns = FieldColumns([f"r{i}" for i in range(6)], metas[:5] + [{"n": 1}])
    assert columns.mask({"n": 1}).tolist() == [True, False, False, False, False, True]
    assert columns.mask({"n": True}).tolist() == [False, False, True, False, False, False]
    assert columns.mask({"n": AnyOf(any_of=["1", 1.5])}).nonzero()[0].tolist() == [1, 3]
    assert columns.mask({"n": Prefix(prefix="1")}).nonzero()[0].tolist() == [3]
    assert columns.mask({"id": Prefix(prefix="r5")}).nonzero()[0].tolist() == [5]
    cache = MaskCache(columns, size=2)
    first = cache.get({"n": 1})
    assert cache.get({"n": 1}) is first
    cache.get({"n": 1.5})
    cache.get({"n": True})  # drops the least recently used
    assert cache.get({"n": 1}) is not first
    assert torch.equal(cache.get({"n": 1}), first)
    assert canonical({"a": 1, "b": AnyOf(any_of=[2, 3])}) == canonical(
        {"b": AnyOf(any_of=[3, 2]), "a": 1}
    )
    assert np.array_equal(columns.mask({}), np.ones(6, dtype=bool))
