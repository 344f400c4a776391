"""Every documented error status, with the problem-details body."""

import threading
import time

import pytest
from fastapi.testclient import TestClient

from tests.builders import make_app

QUERY = {"prompt": "p", "completion": "c"}


def assert_problem(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == status
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"prompt": "p"}, "completion: Field required"),
        ({"queries": [{"prompt": "x"}]}, "queries.0.completion: Field required"),
        ({"completion": "c", "queries": [{"completion": "c"}]}, "Extra inputs are not permitted"),
        ({"completion": ""}, "completion"),
        ({"completion": "c", "top_k": 0}, "top_k"),
        ({"completion": "c", "top_k": 1001}, "top_k"),
        ({"completion": "c", "layers": ["nope"]}, "not tracked"),
        ({"completion": "c", "surprise": 1}, "surprise"),
        ({"queries": []}, "queries"),
    ],
)
def test_422(index_path, body, fragment):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        detail = assert_problem(client.post("/v1/attributions", json=body), 422)["detail"]
        assert fragment in detail
        # Only the form the client used: no "BatchAttributionRequest.queries: Field required".
        assert "AttributionQuery" not in detail and "BatchAttributionRequest" not in detail
        bad_json = client.post(
            "/v1/attributions",
            content=b'{"completion": "c",}',
            headers={"content-type": "application/json"},
        )
        assert assert_problem(bad_json, 422)["detail"] == (
            "body: malformed JSON at character 19: "
            "Expecting property name enclosed in double quotes"
        )


def test_413_tokens_and_body(index_path):
    app, _ = make_app(index_path, max_query_tokens=8, max_body_bytes=4096)
    with TestClient(app) as client:
        body = assert_problem(
            client.post("/v1/attributions", json={"completion": "123456789"}), 413
        )
        assert "9 tokens; the limit is 8" in body["detail"]
        big = {"completion": "x" * 5000}
        assert_problem(client.post("/v1/attributions", json=big), 413)


def test_401_api_keys(index_path):
    app, _ = make_app(index_path, api_keys=["k1", "k2"])
    with TestClient(app) as client:
        body = assert_problem(client.post("/v1/attributions", json=QUERY), 401)
        assert body["detail"] == "missing or invalid API key"
        wrong = client.post("/v1/attributions", json=QUERY, headers={"Authorization": "Bearer k3"})
        assert_problem(wrong, 401)
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/index", headers={"Authorization": "Bearer k2"}).status_code == 200
        ok = client.post("/v1/attributions", json=QUERY, headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # health stays open
        assert client.get("/readyz").status_code == 200
        assert_problem(client.get("/metrics"), 401)


def test_503_queue_full_with_retry_after(index_path):
    app, fake = make_app(index_path, max_queue=1, max_batch=1, retry_after_s=3)
    fake.gate.clear()  # the scan thread blocks inside its first batch
    with TestClient(app) as client:
        results = {}
        first = threading.Thread(
            target=lambda: results.update(a=client.post("/v1/attributions", json=QUERY))
        )
        first.start()
        while not fake.batch_sizes:
            pass
        second = threading.Thread(
            target=lambda: results.update(b=client.post("/v1/attributions", json=QUERY))
        )
        second.start()  # fills the one queue slot
        while app.state.serving.batcher.depth < 1:
            pass
        third = client.post("/v1/attributions", json=QUERY)
        body = assert_problem(third, 503)
        assert third.headers["retry-after"] == "3" and "queue full" in body["detail"]
        fake.gate.set()
        first.join()
        second.join()
        assert results["a"].status_code == 200 and results["b"].status_code == 200


def test_503_when_not_ready(index_path):
    app, _ = make_app(index_path)
    client = TestClient(app)  # not entered: no lifespan, not ready
    assert_problem(client.get("/readyz"), 503)
    response = client.post("/v1/attributions", json=QUERY)
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}


def test_504_timeout(index_path):
    app, _ = make_app(index_path, delay=0.5, request_timeout_s=0.1)
    with TestClient(app) as client:
        body = assert_problem(client.post("/v1/attributions", json=QUERY), 504)
        assert "0.1 s" in body["detail"]


def test_500_never_leaks_a_trace(index_path):
    app, fake = make_app(index_path)
    fake.gradients = lambda encoded: 1 / 0
    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(client.post("/v1/attributions", json=QUERY), 500)
        assert "ZeroDivision" not in body["detail"]
        assert_problem(client.post("/v1/attributions", content=b"x"), 415)
        metrics = client.get("/metrics").text
    # the failed request counted by route and status, the refusal by its reason
    for line in (
        'lorif_http_requests_total{method="POST",route="/v1/attributions",status="500"}',
        'lorif_rejections_total{reason="media_type"}',
    ):
        counted = [row for row in metrics.splitlines() if row.startswith(line)]
        assert counted and float(counted[0].split()[-1]) == 1.0, line


def test_openapi_declares_errors_and_info_routes(index_path):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
        responses = spec["paths"]["/v1/attributions"]["post"]["responses"]
        assert {"200", "401", "413", "422", "500", "503", "504"} <= set(responses)
        assert client.get("/docs").status_code == 200
        info = client.get("/v1/index").json()
        assert info["n_examples"] > 0 and info["residency"] == "ram" and "path" not in info
        assert "path" not in info["model"] and len(info["layers"]) == 14
        client.post("/v1/attributions", json=QUERY)
        metrics = client.get("/metrics").text
        for name in (
            "lorif_http_requests_total",
            "lorif_scan_bytes_total",
            "lorif_queue_depth",
            "lorif_batch_size_bucket",
            'residency="ram"',
            "lorif_scan_wait_seconds_total",
        ):
            assert name in metrics


def test_admission_recovers_after_slow_batches_time_out(index_path):
    """Slow batches that ended in 504 must not make an idle server refuse everything."""
    app, fake = make_app(index_path, request_timeout_s=0.5, max_batch=64)
    batch = {"queries": [{**QUERY, "completion": f"shares rose {i}"} for i in range(64)]}
    with TestClient(app) as client:
        fake.delay = 1.5  # each batch outlives the request timeout
        for _ in range(2):
            assert_problem(client.post("/v1/attributions", json=batch), 504)
            while not app.state.serving.batcher.wait.idle:
                time.sleep(0.01)
        fake.delay = 0.0
        # Nothing is queued or in flight: the server admits the query (and re-measures).
        assert client.post("/v1/attributions", json=QUERY).status_code == 200


def test_415_for_a_body_that_is_not_json(index_path):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        plain = client.post(
            "/v1/attributions",
            content=b'{"completion": "c"}',
            headers={"content-type": "text/plain"},
        )
        assert "application/json (got text/plain)" in assert_problem(plain, 415)["detail"]
        charset = {"content-type": "application/json; charset=utf-8"}
        ok = client.post("/v1/attributions", content=b'{"completion": "shares"}', headers=charset)
        assert ok.status_code == 200


def test_413_for_a_batch_larger_than_the_queue(index_path):
    app, _ = make_app(index_path, max_queue=4)
    batch = {"queries": [{"completion": f"shares {i}"} for i in range(5)]}
    with TestClient(app) as client:
        body = assert_problem(client.post("/v1/attributions", json=batch), 413)
        assert "larger than the server's queue (max_queue 4)" in body["detail"]


def test_unknown_layer_lists_the_valid_names(index_path):
    app, _ = make_app(index_path)
    with TestClient(app) as client:
        body = {"completion": "c", "layers": ["nope"]}
        detail = assert_problem(client.post("/v1/attributions", json=body), 422)["detail"]
        assert "model.layers.0.self_attn.q_proj" in detail and "exact names" in detail


def test_index_info_hides_every_build_path_unless_asked(model_dir, data_file, tmp_path):
    from tests.builders import build_small_index

    index = build_small_index(model_dir, data_file, tmp_path / "paths.h5")
    for expose, visible in ((False, False), (True, True)):
        app, _ = make_app(index, expose_paths=expose)
        with TestClient(app) as client:
            text = client.get("/v1/index").text
        assert (str(model_dir) in text) is visible and (str(data_file) in text) is visible
        assert (str(tmp_path) in text) is visible
