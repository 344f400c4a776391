"""Admission and featurize memory: cost per token, split passes, RSS in /metrics."""

import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from lorif_serve.indexer.core.gradients import ProjectedGradients
from lorif_serve.indexer.core.projection import make_projection
from lorif_serve.indexer.core.query import query_gradients, token_budget_groups
from lorif_serve.indexer.inputs.layers import find_layers
from lorif_serve.server.batcher import Answered, DynamicBatcher, QueueFull, WaitEstimate, WorkItem
from lorif_serve.server.metrics import ServerMetrics
from tests.builders import make_app
from tests.test_server_errors import assert_problem
from tests.tiny import loaded


@pytest.mark.parametrize("budget", [None, 1, 7, 20, 64])
def test_token_groups_cover_every_query_once_within_the_budget(budget):
    lengths = [5, 1, 9, 3, 3, 12, 2, 8]
    groups = token_budget_groups(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        padded = len(group) * max(lengths[i] for i in group)
        assert len(group) == 1 or budget is None or padded <= budget
    if budget is None:
        assert len(groups) == 1
    assert token_budget_groups([], budget) == []


def test_split_featurize_passes_equal_one_pass():
    model = loaded(dtype=torch.float64)
    projections = {
        layer.name: make_projection(layer.name, layer.in_features, layer.out_features, 3, 2, 0)
        for layer in find_layers(model.model)
    }
    capture = ProjectedGradients(model.model, projections)
    encoded = [([5, 9, 2, 7, 1, 3][: 2 + i % 5], 1) for i in range(7)]
    cpu = torch.device("cpu")
    whole, whole_loss = query_gradients(capture, encoded, cpu)
    split, split_loss = query_gradients(capture, encoded, cpu, max_batch_tokens=6)
    torch.testing.assert_close(split_loss, whole_loss)
    for name, grads in whole.items():
        torch.testing.assert_close(split[name], grads)


def test_wait_estimate_counts_tokens_and_batches_ahead():
    estimate = WaitEstimate(smoothing=1.0)
    assert estimate.idle and estimate.seconds(0, 0) == 0.0
    estimate.started(tokens=1000)
    estimate.finished(1000, seconds=2.5, featurize_seconds=2.0)  # 2 ms a token, 0.5 s a scan
    assert estimate.per_token == pytest.approx(0.002) and estimate.per_batch == pytest.approx(0.5)
    assert estimate.seconds(100, 1) == pytest.approx(0.7)
    assert estimate.seconds(4000, 2) == pytest.approx(9.0)  # long queries cost more
    estimate.started(500)  # in flight: what it has left counts too
    assert 1.4 < estimate.seconds(0, 0) <= 1.5


def _item(tokens, deadline):
    loop = type("Loop", (), {"call_soon_threadsafe": lambda self, fn: fn()})()
    future = type("Future", (), {"done": lambda self: True})()
    return WorkItem(None, (list(range(tokens)), 1), future, loop, deadline)  # type: ignore[arg-type]


def test_admission_refuses_what_the_tokens_ahead_would_make_late():
    def process(items):
        time.sleep(0.001 * sum(item.tokens for item in items))
        return Answered([None] * len(items), featurize_seconds=0.001 * sum(i.tokens for i in items))

    batcher = DynamicBatcher(
        process, max_batch=4, max_wait_ms=0, max_queue=64, metrics=ServerMetrics()
    )
    batcher._answer([_item(100, time.perf_counter() + 10)])  # measures ≈ 1 ms a token
    far = time.perf_counter() + 1.0
    batcher.submit([_item(200, far) for _ in range(3)])  # 0.6 s of work queued: admitted
    with pytest.raises(QueueFull) as refused:
        batcher.submit([_item(500, far)])  # 0.6 + 0.5 s > 1 s: refused now, not late
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    batcher.submit([_item(20, far)])  # a short query still fits


def test_overloaded_server_sends_503_with_retry_after_not_504(index_path):
    app, fake = make_app(index_path, request_timeout_s=2.0, max_batch=16)
    query = {"prompt": "the market", "completion": "shares rose sharply today"}  # 35 tokens
    with TestClient(app) as client:
        fake.token_delay = 0.002
        assert client.post("/v1/attributions", json=query).status_code == 200  # measures
        fake.gate.clear()  # the next batch blocks in flight
        results = {}
        batch = {"queries": [query] * 16}  # 560 tokens ≈ 1.1 s
        worker = threading.Thread(
            target=lambda: results.update(a=client.post("/v1/attributions", json=batch))
        )
        worker.start()
        while len(fake.batch_sizes) < 2:
            time.sleep(0.005)
        late = client.post("/v1/attributions", json=batch)  # would need ≈ 2.2 s: refuse now
        body = assert_problem(late, 503)
        assert "busy" in body["detail"] and int(late.headers["retry-after"]) >= 1
        fake.gate.set()
        worker.join()
        assert results["a"].status_code == 200


def test_metrics_show_resident_memory(index_path):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        metrics = client.get("/metrics").text
    rss = [
        line for line in metrics.splitlines() if line.startswith("process_resident_memory_bytes")
    ]
    assert rss and float(rss[0].split()[1]) > 1e6
