"""End to end with a real (tiny) model: CLI-built index, real featurizer, refusal on mismatch."""

import subprocess
import sys

import pytest
import torch
from fastapi.testclient import TestClient

from lorif_serve.errors import StartupError
from lorif_serve.indexer import IndexReader
from lorif_serve.indexer.core.gradients import ProjectedGradients
from lorif_serve.indexer.core.query import ScanQuery, precondition, score_block
from lorif_serve.indexer.inputs.lm import load_model
from lorif_serve.server.app import create_app
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.settings import ServerSettings
from tests.builders import build_small_index, featurize

CURVATURES = {
    "woodbury": ("--curvature-rank", "8"),
    "ekfac-whitened": ("--curvature", "ekfac", "--factor-metric", "whitened"),
    "kfac": ("--curvature", "kfac", "--damping", "trace:0.1"),
}


@pytest.fixture(scope="module", params=list(CURVATURES))
def real_index(request, model_dir, data_file, tmp_path_factory):
    """The same corpus indexed with each kind of curvature: the server answers from any."""
    out = tmp_path_factory.mktemp("e2e") / f"real-{request.param}.h5"
    return build_small_index(
        model_dir, data_file, out, "--factor-rank", "2", *CURVATURES[request.param]
    )


def test_real_model_query_matches_indexer_math(real_index, model_dir):
    settings = ServerSettings(index=real_index, device="cpu", residency="disk", block_rows=7)
    app = create_app(settings, load_service(settings, ServerMetrics()))
    with TestClient(app) as client:
        response = client.post(
            "/v1/attributions",
            json={
                "prompt": "the market",
                "completion": "shares rose more",
                "top_k": 5,
                "opponents": True,
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    model = load_model(model_dir, "cpu")
    with IndexReader(real_index) as reader:
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        q = featurize(
            ProjectedGradients(model.model, projections),
            model.tokenizer,
            [("the market", "shares rose more")],
            torch.device("cpu"),
        )
        curv = {
            s.name: reader.curvature(i).to("cpu", torch.float64)
            for i, s in enumerate(reader.layers)
        }
        hq = precondition(reader.layers, curv, {k: v.double() for k, v in q.grads.items()})
        scores = score_block(
            reader.layout, reader.values(0, reader.n_examples, torch.float64), ScanQuery(hq)
        )[0]
        ids = reader.example_ids()
    assert [r["id"] for r in body["results"]] == [ids[i] for i in scores.topk(5).indices.tolist()]
    assert [r["index"] for r in body["opponents"]] == scores.topk(5, largest=False).indices.tolist()
    assert body["query"]["completion_tokens"] == 3 and body["query"]["loss"] == pytest.approx(
        float(q.losses[0]), rel=1e-5
    )


def test_model_defaults_to_the_index_record(real_index):
    settings = ServerSettings(index=real_index, device="cpu")  # no model given
    service = load_service(settings, ServerMetrics())
    assert service.reader.n_examples > 0
    service.reader.close()


def test_refuses_another_model(real_index, tmp_path):
    from tests.tiny import tiny_llama, tiny_tokenizer

    other = tmp_path / "other"
    tiny_llama(seed=1, dtype=torch.float32).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    settings = ServerSettings(index=real_index, model=other, device="cpu")
    with pytest.raises(StartupError, match="differing: weights_hash"):
        load_service(settings, ServerMetrics())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--index",
            str(real_index),
            "--model",
            str(other),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 2
        and "does not match the one the index was built with" in result.stderr
    )
