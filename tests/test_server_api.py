"""The HTTP API against brute-force scores computed with the indexer's own math."""

import asyncio
import re
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from lorif_serve.indexer import IndexReader
from tests.builders import brute_force, make_app


def check(result, scores, ids, k, opponents=False):
    top = scores.topk(k).indices.tolist()
    assert [item["index"] for item in result["results"]] == top
    assert [item["id"] for item in result["results"]] == [ids[i] for i in top]
    assert [item["rank"] for item in result["results"]] == list(range(1, k + 1))
    got = torch.tensor([item["score"] for item in result["results"]], dtype=torch.float64)
    torch.testing.assert_close(got, scores[top], rtol=1e-4, atol=1e-6 * scores.abs().max().item())
    if opponents:
        bottom = scores.topk(k, largest=False).indices.tolist()
        assert [item["index"] for item in result["opponents"]] == bottom


@pytest.mark.parametrize("residency", ["ram", "disk"])
@pytest.mark.parametrize("block_rows", [16, 25, 10_000])
def test_topk_equals_brute_force(index_path, residency, block_rows):
    app, fake = make_app(index_path, residency, block_rows)
    query = {"prompt": "the market", "completion": "shares rose", "top_k": 7, "opponents": True}
    with TestClient(app) as client:
        response = client.post("/v1/attributions", json=query)
    assert response.status_code == 200, response.text
    body = response.json()
    scores, ids = brute_force(index_path, fake, [("the market", "shares rose")])
    check(body, scores[0], ids, 7, opponents=True)
    assert body["results"][0]["text"] and body["results"][0]["metadata"]["topic"].startswith("t")
    assert body["index"]["residency"] == residency
    assert body["query"] == {
        "prompt_tokens": 10,
        "completion_tokens": 11,
        "unscored_tokens": 0,
        "loss": 21.0,
    }
    timings = body["timings"]
    assert timings["scan_blocks"] == -(-body["index"]["n_examples"] // block_rows)
    assert timings["total_ms"] >= timings["scan_ms"] > 0


def test_batch_equals_singles_and_layer_subsets(index_path):
    app, fake = make_app(index_path)
    queries = [("", "vote party"), ("film", "star"), ("a", "court law police")]
    with IndexReader(index_path) as reader:
        mlp = [s.name for s in reader.layers if ".mlp." in s.name]
    with TestClient(app) as client:
        batch = client.post(
            "/v1/attributions",
            json={
                "queries": [
                    {"prompt": p, "completion": c, "top_k": 5, "return_text": False}
                    for p, c in queries
                ]
                + [{"prompt": "film", "completion": "star", "top_k": 3, "layers": mlp}]
            },
        )
        assert batch.status_code == 200, batch.text
        singles = [
            client.post(
                "/v1/attributions",
                json={"prompt": p, "completion": c, "top_k": 5, "return_text": False},
            ).json()
            for p, c in queries
        ]
    results = batch.json()["batch"]
    assert batch.json()["timings"]["batch_size"] == 4
    for got, single in zip(results, singles, strict=False):
        assert [r["index"] for r in got["results"]] == [r["index"] for r in single["results"]]
        assert "text" not in got["results"][0]
    scores, ids = brute_force(index_path, fake, [("film", "star")], layers=set(mlp))
    check(results[3], scores[0], ids, 3)


def test_concurrent_clients_are_batched_and_exact(index_path):
    app, fake = make_app(index_path, max_wait_ms=50, max_batch=32)
    queries = [(f"q{i}", f"completion {i}") for i in range(32)]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/attributions", json={"prompt": p, "completion": c, "top_k": 4})
                    for p, c in queries
                )
            )
            metrics = (await client.get("/metrics")).text
        return answers, metrics

    with TestClient(app):  # runs the lifespan (loads, starts the batcher)
        answers, metrics = asyncio.run(run())
    scores, ids = brute_force(index_path, fake, queries)
    for row, answer in enumerate(answers):
        assert answer.status_code == 200
        check(answer.json(), scores[row], ids, 4)
    assert max(fake.batch_sizes) > 1
    count = float(re.search(r"^lorif_batch_size_count (\S+)", metrics, re.M).group(1))
    assert count < 32  # fewer scans than queries


def test_a_lone_query_does_not_wait_out_the_batching_window(index_path):
    """With nothing else in the server, a query is answered at once; the window (3 s here)
    is for company that is on its way."""
    app, fake = make_app(index_path, max_wait_ms=3000, max_batch=32)
    query = {"prompt": "film", "completion": "star", "top_k": 2}
    with TestClient(app) as client:
        for _ in range(2):
            began = time.perf_counter()
            assert client.post("/v1/attributions", json=query).status_code == 200
            assert time.perf_counter() - began < 1.5
    assert fake.batch_sizes == [1, 1]


def test_an_empty_prompt_reports_its_unscored_first_token(index_path):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        body = client.post("/v1/attributions", json={"completion": "shares"}).json()
    assert body["query"]["prompt_tokens"] == 0 and body["query"]["completion_tokens"] == 6
    assert body["query"]["unscored_tokens"] == 1  # no context to predict the first token
