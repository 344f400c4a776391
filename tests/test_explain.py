"""Explanations: token and layer splits sum to the scores they split (float64 math, then HTTP)."""

import pytest
import torch
from fastapi.testclient import TestClient

from lorif_serve.indexer import IndexReader
from lorif_serve.indexer.core.explain import (
    per_token_queries,
    stored_space_adjoint,
    token_parts,
)
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.core.kronecker import KroneckerCurvature
from lorif_serve.indexer.core.projection import make_projection
from lorif_serve.indexer.core.query import query_gradients
from lorif_serve.indexer.inputs.layers import find_layers
from lorif_serve.server.app import create_app
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.settings import ServerSettings
from tests.builders import build_small_index
from tests.test_hooks import naive_projected
from tests.tiny import random_sequences, tiny_gpt2, tiny_llama

DTYPE = torch.float64


def _projections(layers):
    return {
        layer.name: make_projection(layer.name, layer.in_features, layer.out_features, 5, 7, 3)
        for layer in layers
    }


def _kronecker(d1, d2, generator):
    def basis(n):
        return torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))[0]

    return KroneckerCurvature(
        basis(d1),
        basis(d2),
        torch.rand(d1, generator=generator, dtype=DTYPE) + 0.1,
        torch.rand(d2, generator=generator, dtype=DTYPE) + 0.1,
        torch.rand(d1, d2, generator=generator, dtype=DTYPE),
        0.05,
        3.0,
        whitened=True,
    )


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_token_parts_sum_to_the_dense_score(factory):
    """Σ_s part_s = Σ_l ⟨D_l, G_l⟩ with G from the per-example autograd loop (float64)."""
    model = factory(dtype=DTYPE)
    layers = find_layers(model)
    projections = _projections(layers)
    generator = torch.Generator().manual_seed(3)
    directions = {
        layer.name: torch.randn(*_shape(projections[layer.name]), generator=generator, dtype=DTYPE)
        for layer in layers[::2]  # a subset of layers, as a `layers=` query scores
    }
    sequences, starts = random_sequences(4, seed=5), [0, 2, 1, 0]
    parts, grads, _ = token_parts(
        ProjectedGradients(model, projections), collate(sequences, starts), directions
    )
    for row, (tokens, start) in enumerate(zip(sequences, starts, strict=True)):
        reference = naive_projected(model, layers, projections, tokens, start)
        expected = sum(float((directions[n] * reference[n]).sum()) for n in directions)
        assert float(parts[row].sum()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert float(parts[row, len(tokens) :].abs().sum()) == 0.0  # padding carries nothing


def _shape(projection):
    return projection.p_in.shape[1], projection.p_out.shape[1]


def test_whitened_adjoint_moves_the_query_not_the_gradient():
    generator = torch.Generator().manual_seed(0)
    curvature = _kronecker(5, 7, generator)
    hq = torch.randn(3, 5, 7, generator=generator, dtype=DTYPE)
    grads = torch.randn(3, 5, 7, generator=generator, dtype=DTYPE)
    stored = curvature.whiten(grads)  # what a whitened layer stores
    left = (hq * stored).sum(dim=(1, 2))
    right = (stored_space_adjoint(curvature, hq) * grads).sum(dim=(1, 2))
    torch.testing.assert_close(left, right, rtol=1e-10, atol=1e-12)


def test_per_token_query_gradients_sum_to_the_query_gradient():
    """The completion split: gradients of the cut sequences add up to the whole one.
    (GPT-2: Llama's RMSNorm computes in float32 whatever the model's dtype.)"""
    model = tiny_gpt2(dtype=DTYPE)
    layers = find_layers(model)
    capture = ProjectedGradients(model, _projections(layers))
    tokens = random_sequences(1, seed=9, low=9, high=10)[0]
    whole, loss = query_gradients(capture, [(tokens, 3)], torch.device("cpu"))
    pieces, capped = per_token_queries((tokens, 3), limit=100)
    assert not capped and [start for _, start in pieces] == list(range(3, len(tokens)))
    split, losses = query_gradients(capture, pieces, torch.device("cpu"))
    assert float(losses.sum()) == pytest.approx(float(loss[0]), rel=1e-12)
    for name, g in whole.items():
        torch.testing.assert_close(split[name].sum(dim=0), g[0], rtol=1e-9, atol=1e-12)
    assert per_token_queries((tokens, 3), limit=2) == (pieces[:2], True)


# ---- through the server, real tiny model -------------------------------------------------
KINDS = {
    "woodbury": ("--factor-rank", "2", "--curvature-rank", "8"),
    "ekfac-whitened": ("--factor-rank", "2", "--curvature", "ekfac", "--factor-metric", "whitened"),
    "dense": ("--dense", "--curvature-rank", "8", "--dtype", "fp32"),
}


@pytest.fixture(scope="module", params=list(KINDS))
def kind_index(request, model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / f"{request.param}.h5"
    return request.param, build_small_index(model_dir, data_file, out, *KINDS[request.param])


def _query(client, **extra):
    body = {"prompt": "the market", "completion": "shares rose more", "top_k": 4, **extra}
    response = client.post("/v1/attributions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_explanations_split_the_scores(kind_index):
    kind, path = kind_index
    settings = ServerSettings(index=path, device="cpu", residency="ram")
    app = create_app(settings, load_service(settings, ServerMetrics()))
    with TestClient(app) as client:
        plain = _query(client, opponents=True)
        body = _query(client, opponents=True, explain=True)
    assert [r["id"] for r in body["results"]] == [r["id"] for r in plain["results"]]
    assert "explanation" not in plain["results"][0]
    completion = body["query"]["explanation"]["completion_tokens"]
    assert [t["text"] for t in completion] == ["shares", "rose", "more"]
    assert sum(t["score"] for t in completion) == pytest.approx(body["query"]["loss"], rel=1e-5)
    with IndexReader(path) as reader:
        layer_names = [spec.name for spec in reader.layers]
    for item in [*body["results"], *body["opponents"]]:
        explanation = item["explanation"]
        scale = max(1e-6, abs(item["score"]))
        layer_sum = sum(part["score"] for part in explanation["layers"])
        assert [part["layer"] for part in explanation["layers"]] == layer_names
        assert layer_sum == pytest.approx(item["score"], abs=1e-4 * scale)
        assert sum(explanation["completion"]) == pytest.approx(item["score"], abs=1e-3 * scale)
        assert len(explanation["completion"]) == 3
        tokens = explanation["tokens"]
        assert explanation["tokens_match"] and tokens
        assert all(item["text"][t["start"] : t["end"]] == t["text"] for t in tokens)
        token_sum = sum(t["score"] for t in tokens)
        assert token_sum == pytest.approx(explanation["recomputed_score"], rel=1e-4, abs=1e-9)
        if kind == "dense":  # no truncation: the recomputed score is the stored one
            assert explanation["recomputed_score"] == pytest.approx(
                item["score"], rel=1e-5, abs=1e-7
            )


def test_explanation_of_a_layer_subset(kind_index):
    _, path = kind_index
    settings = ServerSettings(index=path, device="cpu")
    app = create_app(settings, load_service(settings, ServerMetrics()))
    with IndexReader(path) as reader:
        some = [spec.name for spec in reader.layers if ".mlp." in spec.name]
    with TestClient(app) as client:
        body = _query(client, explain=True, layers=some)
    for item in body["results"]:
        parts = item["explanation"]["layers"]
        assert [p["layer"] for p in parts] == some
        assert sum(p["score"] for p in parts) == pytest.approx(item["score"], rel=1e-4, abs=1e-9)
