"""Kronecker curvature (K-FAC / EK-FAC in the projected space) against float64 references."""

import pytest
import torch

from lorif_serve.indexer import IndexConfig, IndexReader, build_index
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.core.kronecker import (
    KroneckerCurvature,
    KroneckerStatistics,
    eigen_moments,
    kfac_eigvals,
)
from lorif_serve.indexer.core.query import ScanQuery, precondition, score_block
from lorif_serve.indexer.inputs.examples import make_examples
from lorif_serve.indexer.inputs.records import Record
from tests.builders import featurize
from tests.tiny import loaded, random_texts


def orthonormal(n, seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


def random_curvature(d1=4, d2=3, whitened=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return KroneckerCurvature(
        orthonormal(d1, seed + 1),
        orthonormal(d2, seed + 2),
        torch.rand(d1, generator=gen, dtype=torch.float64) + 0.1,
        torch.rand(d2, generator=gen, dtype=torch.float64) + 0.1,
        torch.rand(d1, d2, generator=gen, dtype=torch.float64) * 3,
        damping=0.3,
        trace=1.0,
        whitened=whitened,
    )


def explicit_inverse(curvature):
    basis = torch.kron(curvature.basis_in, curvature.basis_out)  # row-major vec(A X Bᵀ)
    h = basis @ torch.diag(curvature.eigvals.flatten()) @ basis.T
    return torch.linalg.inv(h + curvature.damping * torch.eye(h.shape[0], dtype=h.dtype))


def test_precondition_equals_the_explicit_inverse():
    curvature = random_curvature()
    g = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(curvature.precondition(g), g @ explicit_inverse(curvature).T)


def test_whitened_rows_score_like_raw_rows():
    raw, whitened = random_curvature(), random_curvature(whitened=True)
    g_train = torch.randn(7, 4, 3, dtype=torch.float64)
    g_query = torch.randn(2, 12, dtype=torch.float64)
    expected = raw.precondition(g_query) @ g_train.reshape(7, -1).T
    stored = whitened.whiten(g_train).reshape(7, -1)
    torch.testing.assert_close(whitened.precondition(g_query) @ stored.T, expected)


def test_statistics_and_moments_equal_per_token_loops():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    dy = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    stats = KroneckerStatistics(4, 3)
    stats.accumulate(x[:1], dy[:1])
    stats.accumulate(x[1:], dy[1:])
    a = sum(torch.outer(x[b, t], x[b, t]) for b in range(2) for t in range(5))
    s = sum(torch.outer(dy[b, t], dy[b, t]) for b in range(2) for t in range(5))
    torch.testing.assert_close(stats.cov_in, a)
    torch.testing.assert_close(stats.cov_out, s)
    basis_in, values_in, basis_out, values_out = stats.eigen()
    torch.testing.assert_close(basis_in @ torch.diag(values_in) @ basis_in.T, a)
    g = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    loop = sum((basis_in.T @ g[i] @ basis_out) ** 2 for i in range(6))
    torch.testing.assert_close(eigen_moments(g, basis_in, basis_out), loop)
    grid = kfac_eigvals(values_in, values_out, trace=7.0)
    torch.testing.assert_close(grid.sum(), torch.tensor(7.0, dtype=torch.float64))


def reference_scores(model, examples, reader, queries, kind):
    """Exact K-FAC / EK-FAC influence from hooks: per-token A and S, dense G, explicit inverse."""
    specs = reader.layers
    projections = {reader.projection(i).name: reader.projection(i) for i in range(len(specs))}
    capture = ProjectedGradients(model.model, projections)
    stats = {s.name: KroneckerStatistics(s.d1, s.d2) for s in specs}
    grads = {s.name: [] for s in specs}
    for example in examples:  # one example at a time: no batching in the reference
        batch = collate([example.tokens], [example.loss_start])
        g, _ = capture(batch, observe=lambda n, x, dy: stats[n].accumulate(x, dy))
        for name, value in g.items():
            grads[name].append(value[0].double())
    q = featurize(capture, model.tokenizer, queries)
    total = torch.zeros(len(queries), len(examples), dtype=torch.float64)
    for spec in specs:
        g = torch.stack(grads[spec.name])  # (N, d1, d2)
        basis_in, values_in, basis_out, values_out = stats[spec.name].eigen()
        trace = float((g**2).sum())
        grid = (
            eigen_moments(g, basis_in, basis_out)
            if kind == "ekfac"
            else kfac_eigvals(values_in, values_out, trace)
        )
        damping = 0.1 * trace / spec.dim
        exact = KroneckerCurvature(basis_in, basis_out, values_in, values_out, grid, damping, trace)
        inverse = explicit_inverse(exact)
        gq = q.grads[spec.name].double().reshape(len(queries), -1)
        total += gq @ inverse @ g.reshape(len(examples), -1).T
    return total


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
@pytest.mark.parametrize("metric", ["raw", "whitened"])
def test_full_rank_index_equals_exact_kronecker_influence(tmp_path, kind, metric):
    model = loaded()
    records = [Record(f"d{i}", "m", text=t) for i, t in enumerate(random_texts(12, seed=8))]
    examples = make_examples(iter(records), model.tokenizer, 8)[0]
    config = IndexConfig(
        projection_factor=4,
        factor_rank=8,  # ≥ min(d1, d2) for every layer: no truncation
        curvature=kind,
        factor_metric=metric,
        damping="trace:0.1",
        dtype="fp32",
        precision="float64",
        batch_size=5,
    )
    path = tmp_path / "k.h5"
    build_index(model, examples, path, config, progress=False)
    queries = [("the market", "shares rose"), ("", "film star award")]
    with IndexReader(path) as reader:
        assert reader.curvature_kind == kind
        specs = reader.layers
        curvatures = {
            s.name: reader.curvature(i).to("cpu", torch.float64) for i, s in enumerate(specs)
        }
        projections = {reader.projection(i).name: reader.projection(i) for i in range(len(specs))}
        q = featurize(ProjectedGradients(model.model, projections), model.tokenizer, queries)
        hq = precondition(specs, curvatures, {k: v.double() for k, v in q.grads.items()})
        rows = reader.values(0, reader.n_examples, torch.float64)
        got = score_block(reader.layout, rows, ScanQuery(hq))
        expected = reference_scores(model, examples, reader, queries, kind)
    # Curvature and rows are stored in float32: agreement to float32 accuracy.
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-5 * expected.abs().max().item())


def test_cli_builds_and_describes_a_kronecker_index(model_dir, data_file, tmp_path, capsys):
    from lorif_serve.indexer.cli import main
    from tests.builders import build_small_index

    out = build_small_index(
        model_dir,
        data_file,
        tmp_path / "k.h5",
        "--curvature",
        "ekfac",
        "--factor-metric",
        "whitened",
    )
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "EK-FAC in the projected space, factors truncated whitened" in capsys.readouterr().out


def test_whitened_factors_need_a_kronecker_curvature():
    from lorif_serve.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a Kronecker curvature"):
        IndexConfig(curvature="factors", factor_metric="whitened")
    with pytest.raises(ConfigError, match="trace:K"):
        IndexConfig(damping="trace:zero")
    assert IndexConfig(damping="trace:0.1").damping == "trace:0.1"
