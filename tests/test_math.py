"""Factors, streaming curvature, Woodbury and score kernels against naive float64 references."""

import pytest
import torch

from lorif_serve.indexer.core.curvature import RandomizedEigenSolver, resolve_damping
from lorif_serve.indexer.core.factors import (
    LayerSpec,
    RowLayout,
    dense_from_factors,
    low_rank_factors,
)
from lorif_serve.indexer.core.scoring import (
    factor_query,
    score_dense,
    score_factored,
    score_factored_lowrank,
    truncate_query,
)

torch.set_default_dtype(torch.float64)


def grads(n=40, d1=6, d2=5, seed=0):
    return torch.randn(n, d1, d2, generator=torch.Generator().manual_seed(seed))


def test_full_rank_factors_reproduce_gradients():
    g = grads()
    left, right = low_rank_factors(g, 5)
    torch.testing.assert_close(dense_from_factors(left, right), g)


def test_rank_c_factors_equal_truncated_svd():
    g = grads()
    left, right = low_rank_factors(g, 2)
    u, s, vh = torch.linalg.svd(g)
    reference = u[:, :, :2] @ torch.diag_embed(s[:, :2]) @ vh[:, :2, :]
    torch.testing.assert_close(dense_from_factors(left, right), reference)


def test_full_rank_factored_scores_equal_dense_scores():
    g, hq = grads(), grads(3, seed=1)
    left, right = low_rank_factors(g, 5)
    dense = score_dense(g.reshape(40, -1), hq.reshape(3, -1))
    torch.testing.assert_close(score_factored(left, right, hq), dense)
    naive = torch.einsum("bij,nij->bn", hq, g)
    torch.testing.assert_close(dense, naive)


@pytest.mark.parametrize("energy", [0.5, 0.9, 1.0])
def test_lowrank_query_scan(energy):
    g, hq = grads(), grads(3, seed=1)
    left, right = low_rank_factors(g, 2)
    query = factor_query(hq, energy=energy)
    assert (query.energy_kept >= energy - 1e-9).all()
    approx = score_factored_lowrank(left, right, query)
    truncated_hq = query.left.transpose(1, 2) @ (query.scales[:, :, None] * query.right)
    torch.testing.assert_close(approx, score_factored(left, right, truncated_hq))
    if energy == 1.0:
        torch.testing.assert_close(approx, score_factored(left, right, hq))


def test_truncate_query_is_rank_c():
    q = truncate_query(grads(2), 1)
    assert torch.linalg.matrix_rank(q[0]) == 1


def stream(solver, rows, block):
    while not solver.done:
        for start in range(0, rows.shape[0], block):
            solver.accumulate(rows[start : start + block])
        solver.finish_pass()


def low_rank_rows(n=300, dim=48, rank=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # A spectrum that decays fast after `rank`, like projected gradients do.
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
    scales = torch.cat([torch.linspace(10, 3, rank), 0.01 * torch.ones(dim - rank)])
    return torch.randn(n, dim, generator=gen) * scales @ basis.T


def test_streaming_randomized_svd_matches_eigh():
    rows = low_rank_rows()
    solver = RandomizedEigenSolver(48, rank=8, oversample=10, power_iters=3, seed=1)
    stream(solver, rows, block=37)
    curvature, _ = solver.result("trace")
    values, vectors = torch.linalg.eigh(rows.T @ rows)
    top_values, top_vectors = values.flip(0)[:8], vectors.flip(1)[:, :8]
    torch.testing.assert_close(curvature.eigvals, top_values, rtol=1e-8, atol=1e-8)
    # Subspace angles: singular values of V_refᵀ V are the cosines, all ≈ 1.
    cosines = torch.linalg.svdvals(top_vectors.T @ curvature.eigvecs)
    assert cosines.min() > 1 - 1e-8
    assert curvature.trace == pytest.approx(float((rows**2).sum()), rel=1e-12)
    assert curvature.damping == pytest.approx(0.5 * curvature.trace / 48)


def test_streaming_is_independent_of_block_size():
    rows = low_rank_rows(seed=3)
    results = []
    for block in (300, 16):
        solver = RandomizedEigenSolver(48, rank=6, seed=2)
        stream(solver, rows, block)
        results.append(solver.result(0.1)[0])
    torch.testing.assert_close(results[0].eigvals, results[1].eigvals, rtol=1e-10, atol=1e-10)


def test_solver_checkpoint_resume_is_exact():
    rows = low_rank_rows(seed=4)
    full = RandomizedEigenSolver(48, rank=6, seed=5)
    stream(full, rows, 50)
    partial = RandomizedEigenSolver(48, rank=6, seed=5)
    for start in range(0, rows.shape[0], 50):
        partial.accumulate(rows[start : start + 50])
    partial.finish_pass()
    resumed = RandomizedEigenSolver(48, rank=6, seed=5)
    resumed.load_state(partial.state())
    stream(resumed, rows, 50)
    assert torch.equal(full.result("trace")[0].eigvecs, resumed.result("trace")[0].eigvecs)


def test_woodbury_equals_explicit_inverse():
    rows = low_rank_rows(n=100, dim=20, rank=20, seed=6)
    solver = RandomizedEigenSolver(20, rank=5, seed=0)
    stream(solver, rows, 100)
    curvature, _ = solver.result("trace")
    v, lam = curvature.eigvecs, curvature.damping
    h = v @ torch.diag(curvature.eigvals) @ v.T + lam * torch.eye(20)
    queries = torch.randn(4, 20)
    expected = torch.linalg.solve(h, queries.T).T
    torch.testing.assert_close(curvature.precondition(queries), expected, rtol=1e-9, atol=1e-12)


def test_damping_rules():
    ritz = torch.tensor([4.0, 2.0])
    assert resolve_damping("trace", 10.0, 5, ritz) == 1.0
    assert resolve_damping("paper", 10.0, 5, ritz) == pytest.approx(0.3)
    assert resolve_damping(0.25, 10.0, 5, ritz) == 0.25
    with pytest.raises(ValueError, match="unknown damping"):
        resolve_damping("median", 1.0, 1, ritz)
    with pytest.raises(ValueError, match="positive"):
        resolve_damping("trace", 0.0, 1, ritz)


def test_row_layout_round_trip():
    specs = [LayerSpec("a", 8, 8, 4, 3, 2), LayerSpec("b", 8, 8, 2, 2, 1, dense=True)]
    layout = RowLayout(specs)
    assert layout.width == 2 * (4 + 3) + 4
    g = {"a": grads(5, 4, 3), "b": grads(5, 2, 2, seed=9)}
    block = layout.pack(g)
    torch.testing.assert_close(layout.gradients(specs[1], block), g["b"].reshape(5, -1))
    left, right = layout.factors(specs[0], block)
    torch.testing.assert_close(dense_from_factors(left, right), truncate_query(g["a"], 2))


@pytest.mark.parametrize("mode", [{}, {"energy": 1.0}])
def test_score_block_equals_the_naive_reference(mode):
    from lorif_serve.indexer.core.query import ScanQuery, score_block
    from lorif_serve.indexer.core.scoring import score_reference

    specs = [
        LayerSpec("a", 8, 6, 4, 3, 2),
        LayerSpec("b", 6, 10, 3, 5, 3),
        LayerSpec("c", 6, 6, 3, 3, 1, dense=True),
    ]
    layout = RowLayout(specs)
    gen = torch.Generator().manual_seed(7)
    block = layout.pack({s.name: torch.randn(9, s.d1, s.d2, generator=gen) for s in specs})
    hq = {s.name: torch.randn(2, s.d1, s.d2, generator=gen) for s in specs}
    fast = score_block(layout, block, ScanQuery(hq, **mode))
    torch.testing.assert_close(fast, score_reference(layout, block, hq))
    partial = {k: v for k, v in hq.items() if k != "b"}  # a query over some layers only
    torch.testing.assert_close(
        score_block(layout, block, ScanQuery(partial)), score_reference(layout, block, partial)
    )


def test_nystrom_sketch_of_a_low_rank_gram_equals_eigh():
    from lorif_serve.indexer.core.nystrom import NystromSketch

    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(40, 6, generator=gen) @ torch.randn(6, 30, generator=gen)  # rank 6
    sketch = NystromSketch(30, rank=6, oversample=4, seed=2)
    for start in range(0, 40, 7):  # streamed in blocks
        sketch.accumulate(rows[start : start + 7])
    values, vectors = sketch.eigenpairs()
    exact_values, exact_vectors = torch.linalg.eigh(rows.T @ rows)
    torch.testing.assert_close(values[:6], exact_values.flip(0)[:6], rtol=1e-8, atol=1e-8)
    # Same subspace: projectors agree.
    top = exact_vectors[:, -6:]
    torch.testing.assert_close(vectors[:, :6] @ vectors[:, :6].T, top @ top.T, atol=1e-8, rtol=0)
    curvature = sketch.result("trace")
    assert curvature.trace == pytest.approx(float((rows**2).sum()))
    assert curvature.damping == pytest.approx(0.5 * curvature.trace / 30)


def test_nystrom_sketch_of_a_full_rank_gram_keeps_the_top_eigenvalues():
    from lorif_serve.indexer.core.nystrom import NystromSketch

    gen = torch.Generator().manual_seed(6)
    scales = torch.logspace(0, -3, 20)  # a fast-decaying spectrum
    rows = torch.randn(200, 20, generator=gen) * scales
    sketch = NystromSketch(20, rank=4, oversample=10, seed=1)
    sketch.accumulate(rows)
    values, _ = sketch.eigenpairs()
    exact = torch.linalg.eigvalsh(rows.T @ rows).flip(0)
    torch.testing.assert_close(values[:4], exact[:4], rtol=1e-3, atol=0)
