"""End-to-end index builds: scores read back, exactness of the dense baseline, invariances."""

import h5py
import numpy as np
import pytest
import torch

from lorif_serve.indexer import IndexConfig, IndexReader, build_index
from lorif_serve.indexer.cli import main
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.core.query import ScanQuery, precondition, score_block
from lorif_serve.indexer.inputs.examples import make_examples
from lorif_serve.indexer.inputs.records import read_records
from lorif_serve.indexer.store import schema
from tests.builders import build_args, featurize
from tests.tiny import loaded, random_texts


def examples_for(model, count=30, max_tokens=12):
    records = iter([])
    from lorif_serve.indexer.inputs.records import Record

    records = [Record(f"d{i}", "mem", text=t) for i, t in enumerate(random_texts(count, seed=5))]
    return make_examples(iter(records), model.tokenizer, max_tokens)[0]


def index_scores(reader, model, queries, **scan):
    specs = reader.layers
    projections = {reader.projection(i).name: reader.projection(i) for i in range(len(specs))}
    capture = ProjectedGradients(model.model, projections)
    q = featurize(capture, model.tokenizer, queries, torch.device("cpu"))
    curvatures = {s.name: reader.curvature(i).to("cpu", torch.float64) for i, s in enumerate(specs)}
    hq = precondition(specs, curvatures, {k: v.double() for k, v in q.grads.items()})
    block = reader.values(0, reader.n_examples, torch.float64)
    return score_block(reader.layout, block, ScanQuery(hq, **scan)), q


QUERIES = [("the market", "shares rose more"), ("", "film star music award")]


def test_cli_index_scores_equal_in_memory_scores(model_dir, data_file, tmp_path):
    out = tmp_path / "cli.h5"
    args = build_args(
        model_dir,
        data_file,
        out,
        factor_rank=2,
        curvature_rank=16,
        dtype="fp32",
        max_tokens=10,
        batch_size=8,
    )
    assert main(args) == 0
    assert main(["verify", str(out)]) == 0
    assert main(["info", str(out)]) == 0
    from lorif_serve.indexer.inputs.lm import load_model

    model = load_model(model_dir, "cpu", "float32")
    with IndexReader(out) as reader:
        scores, _ = index_scores(reader, model, QUERIES)
        # In memory: the same hooks on the same examples, factors never written to disk.
        ids = reader.example_ids()
        examples = make_examples(read_records(data_file), model.tokenizer, 10)[0]
        assert [e.id for e in examples] == ids
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        capture = ProjectedGradients(model.model, projections)
        grads, _ = capture(collate([e.tokens for e in examples], [e.loss_start for e in examples]))
        rows = reader.layout.pack(grads).double()
        q = featurize(capture, model.tokenizer, QUERIES, torch.device("cpu"))
        curv = {
            s.name: reader.curvature(i).to("cpu", torch.float64)
            for i, s in enumerate(reader.layers)
        }
        hq = precondition(reader.layers, curv, {k: v.double() for k, v in q.grads.items()})
        expected = score_block(reader.layout, rows, ScanQuery(hq))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("curvature", ["factors", "gradients"])
def test_dense_full_rank_equals_exact_damped_influence(tmp_path, curvature):
    """Woodbury subspace at full rank (r = D) from the stored rows or sketched from the
    dense gradients in the factor pass: both give the exact damped influence."""
    model = loaded()
    examples = examples_for(model)
    config = IndexConfig(
        d1=3,
        d2=4,
        dense=True,
        curvature=curvature,
        curvature_rank=10_000,
        damping=0.05,
        dtype="fp32",
        precision="float64",
        max_tokens=12,
    )
    build_index(model, examples, tmp_path / "dense.h5", config, progress=False)
    with IndexReader(tmp_path / "dense.h5") as reader:
        scores, q = index_scores(reader, model, QUERIES)
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
    capture = ProjectedGradients(model.model, projections)
    grads, _ = capture(collate([e.tokens for e in examples], [e.loss_start for e in examples]))
    expected = torch.zeros(len(QUERIES), len(examples), dtype=torch.float64)
    for name, g in grads.items():
        flat = g.reshape(len(examples), -1)
        h = flat.T @ flat + 0.05 * torch.eye(flat.shape[1], dtype=torch.float64)
        gq = q.grads[name].reshape(len(QUERIES), -1)
        expected += torch.linalg.solve(h, gq.T).T @ flat.T
    # V and the stored G are float32 (docs/index-format.md): agreement to float32 accuracy.
    torch.testing.assert_close(scores, expected, rtol=1e-3, atol=2e-5 * expected.abs().max().item())


def test_full_rank_lorif_reproduces_logra_dense(tmp_path):
    model = loaded()
    examples = examples_for(model)
    common = {
        "d1": 3,
        "d2": 4,
        "curvature_rank": 12,
        "dtype": "fp32",
        "precision": "float64",
        "max_tokens": 12,
    }
    build_index(
        model, examples, tmp_path / "d.h5", IndexConfig(dense=True, **common), progress=False
    )
    build_index(
        model, examples, tmp_path / "f.h5", IndexConfig(factor_rank=3, **common), progress=False
    )
    with IndexReader(tmp_path / "d.h5") as dense, IndexReader(tmp_path / "f.h5") as factored:
        assert factored.bytes_per_example == 4 * 14 * 3 * (3 + 4)
        assert dense.bytes_per_example == 4 * 14 * 12
        dense_scores, _ = index_scores(dense, model, QUERIES)
        lorif_scores, _ = index_scores(factored, model, QUERIES)
        lowrank_scores, _ = index_scores(factored, model, QUERIES, energy=1.0)
    torch.testing.assert_close(lorif_scores, dense_scores, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(lowrank_scores, lorif_scores, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("curvature", ["factors", "ekfac"])
def test_build_does_not_depend_on_batch_size(tmp_path, curvature):
    model = loaded()
    examples = examples_for(model)
    datasets = []
    for size in (3, 16):
        config = IndexConfig(
            projection_factor=2,
            factor_rank=2,
            curvature=curvature,
            curvature_rank=6,
            batch_size=size,
            dtype="fp32",
            precision="float64",
            max_tokens=12,
        )
        build_index(model, examples, tmp_path / f"b{size}.h5", config, progress=False)
        with IndexReader(tmp_path / f"b{size}.h5") as reader:
            datasets.append((reader.rows(0, reader.n_examples).numpy(), reader.curvature(0)))
    (fa, ca), (fb, cb) = datasets
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ca.eigvals, cb.eigvals, rtol=1e-5, atol=1e-9)
    assert ca.damping == pytest.approx(cb.damping, rel=1e-6)
    if curvature == "factors":
        # Eigenvectors up to sign: |cos| of matching columns ≈ 1.
        cosines = (ca.eigvecs * cb.eigvecs).sum(0).abs()
        np.testing.assert_allclose(cosines, 1, atol=1e-4)
    else:
        for a, b in ((ca.basis_in, cb.basis_in), (ca.basis_out, cb.basis_out)):
            np.testing.assert_allclose((a * b).sum(0).abs(), 1, atol=1e-4)


def test_storage_dtypes_round_trip(tmp_path):
    model = loaded()
    examples = examples_for(model, count=8)
    stored = {}
    for dtype in ("bf16", "fp16", "fp32"):
        config = IndexConfig(
            projection_factor=2, curvature_rank=4, dtype=dtype, precision="float64"
        )
        build_index(model, examples, tmp_path / f"{dtype}.h5", config, progress=False)
        with IndexReader(tmp_path / f"{dtype}.h5") as reader:
            stored[dtype] = reader.values(0, reader.n_examples, torch.float64)
            with h5py.File(tmp_path / f"{dtype}.h5") as f:
                on_disk = f[schema.FACTORS]
                assert on_disk.chunks is None and on_disk.compression is None  # memory-mappable
                assert on_disk.attrs[schema.ATTR_STORAGE_DTYPE] == reader.storage_dtype
    assert stored["bf16"].dtype == torch.float64
    torch.testing.assert_close(
        stored["bf16"], stored["fp32"], rtol=1e-2, atol=1e-2 * stored["fp32"].abs().max().item()
    )
    torch.testing.assert_close(stored["fp16"], stored["fp32"], rtol=1e-3, atol=1e-5)
    assert torch.equal(stored["bf16"], stored["fp32"].to(torch.bfloat16).to(torch.float64))


def test_prompt_masking_changes_the_gradient():
    model = loaded()
    capture_specs = {}
    from lorif_serve.indexer.core.projection import make_projection
    from lorif_serve.indexer.inputs.layers import find_layers

    for layer in find_layers(model.model):
        capture_specs[layer.name] = make_projection(
            layer.name, layer.in_features, layer.out_features, 3, 3, 0
        )
    capture = ProjectedGradients(model.model, capture_specs)
    full, _ = capture(collate([[5, 6, 7, 8]], [0]))
    masked, _ = capture(collate([[5, 6, 7, 8]], [2]))
    name = next(iter(full))
    assert not torch.allclose(full[name], masked[name])
