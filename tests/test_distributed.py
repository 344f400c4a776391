"""A 2-process torchrun build (gloo) equals the single-process build."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from lorif_serve.indexer import IndexFileError, IndexReader
from lorif_serve.indexer.build.distributed import shard_path, shard_rows
from lorif_serve.indexer.cli import main as index_main
from lorif_serve.indexer.core.query import ScanQuery, score_block
from lorif_serve.indexer.store import schema
from tests import builders


def build_args(model_dir, data_file, out):
    return builders.build_args(
        model_dir,
        data_file,
        out,
        factor_rank=2,
        curvature="factors",
        curvature_rank=8,
        max_tokens=6,
        batch_size=3,
    ) + ["--device", "cpu"]


def bits(rows):
    """Stored rows compared bit for bit (bf16 as its raw 16-bit pattern)."""
    return rows.view(torch.int16) if rows.dtype == torch.bfloat16 else rows


def torchrun(args, processes=2):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "indexer",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def builds(model_dir, data_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    single, sharded = folder / "single.h5", folder / "sharded.h5"
    assert index_main(build_args(model_dir, data_file, single)) == 0
    result = torchrun(build_args(model_dir, data_file, sharded))
    assert result.returncode == 0, result.stderr[-3000:]
    return single, sharded


def test_shards_cut_at_batch_boundaries():
    assert [shard_rows(10, 3, r, 2) for r in range(2)] == [(0, 6), (6, 10)]
    assert [shard_rows(7, 3, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 7)]
    # Fewer batches than ranks: the first rank's slice is empty, the union still covers N.
    assert [shard_rows(2, 3, r, 2) for r in range(2)] == [(0, 0), (0, 2)]


def test_two_process_build_equals_single_process(builds):
    single, sharded = builds
    with IndexReader(single) as one, IndexReader(sharded) as two:
        assert two.n_examples == one.n_examples and one.n_examples % 2 == 1  # N not divisible by K
        assert len(two.shard_paths) == 2
        assert torch.equal(
            bits(one.rows(0, one.n_examples)),
            bits(two.rows(0, two.n_examples)),
        )
        assert one.example_ids() == two.example_ids()
        for i in range(len(one.layers)):
            a, b = one.curvature(i), two.curvature(i)
            torch.testing.assert_close(
                a.eigvals, b.eigvals, rtol=1e-4, atol=1e-6 * float(a.eigvals[0])
            )
            cosines = torch.linalg.svdvals(a.eigvecs[:, :4].double().T @ b.eigvecs[:, :4].double())
            assert cosines.min() > 0.999
            assert a.damping == pytest.approx(b.damping, rel=1e-5)
        hq = {
            s.name: torch.randn(2, s.d1, s.d2, generator=torch.Generator().manual_seed(3))
            for s in one.layers
        }
        top_one = score_block(one.layout, one.values(0, one.n_examples), ScanQuery(hq)).topk(5)
        top_two = score_block(two.layout, two.values(0, two.n_examples), ScanQuery(hq)).topk(5)
        assert torch.equal(top_one.indices, top_two.indices)
        assert two.verify() == []
    with h5py.File(sharded) as f:
        assert f[schema.FACTORS].is_virtual and f[schema.EXAMPLE_TEXT].is_virtual
        assert list(f[schema.EXAMPLE_TEXT].asstr()[:3]) == [
            r.text for r in IndexReader(single).examples([0, 1, 2])
        ]


def test_each_shard_is_a_servable_index_of_its_rows(builds):
    _, sharded = builds
    with IndexReader(shard_path(sharded, 1, 2)) as shard, IndexReader(sharded) as whole:
        assert shard.row_offset > 0 and shard.row_offset + shard.n_examples == whole.n_examples
        assert torch.equal(
            bits(shard.rows(0, shard.n_examples)),
            bits(whole.rows(shard.row_offset, whole.n_examples)),
        )


def test_missing_shard_is_refused(builds, tmp_path):
    _, sharded = builds
    copy = tmp_path / sharded.name
    shutil.copy(sharded, copy)
    shutil.copy(shard_path(sharded, 0, 2), tmp_path)  # shard 1 left behind
    with pytest.raises(IndexFileError, match="shard .*00001-of-00002.h5 is missing"):
        IndexReader(copy)


def test_rerun_is_complete_and_resume_after_a_rank_dies(model_dir, data_file, tmp_path, builds):
    out = tmp_path / "killed.h5"
    env_kill = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "indexer",
            *build_args(model_dir, data_file, out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LORIF_CRASH_AT": "curvature-pass:2"},
    )
    assert env_kill.returncode != 0 and not out.exists()  # failed cleanly, no hang
    rerun = torchrun(build_args(model_dir, data_file, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with IndexReader(builds[1]) as reference, IndexReader(out) as resumed:
        assert torch.equal(
            bits(reference.rows(0, reference.n_examples)),
            bits(resumed.rows(0, resumed.n_examples)),
        )
        np.testing.assert_allclose(
            reference.curvature(0).eigvals, resumed.curvature(0).eigvals, rtol=1e-6
        )


def live_server_for(index):
    from lorif_serve.server.app import create_app
    from lorif_serve.server.loading import load_service
    from lorif_serve.server.metrics import ServerMetrics
    from lorif_serve.server.settings import ServerSettings
    from tests.builders import LiveServer

    settings = ServerSettings(index=index, device="cpu")
    return LiveServer(create_app(settings, load_service(settings, ServerMetrics())))


def test_coordinator_over_shards_equals_one_server(builds):
    import statistics
    import time

    from fastapi.testclient import TestClient

    from lorif_serve.server.coordinator.app import CoordinatorSettings, create_coordinator_app

    _, sharded = builds
    queries = [
        {"prompt": "the market", "completion": "shares rose more", "top_k": 6, "opponents": True},
        {"prompt": "", "completion": "film star music award", "top_k": 3},
        {"completion": "vote party", "top_k": 4, "opponents": True, "filter": {"topic": "t1"}},
    ]
    with (
        live_server_for(sharded) as whole,
        live_server_for(shard_path(sharded, 0, 2)) as a,
        live_server_for(shard_path(sharded, 1, 2)) as b,
    ):
        settings = CoordinatorSettings(shards=[a.url, b.url])
        with TestClient(create_coordinator_app(settings)) as coordinator:
            merged = coordinator.post("/v1/attributions", json={"queries": queries})
            assert merged.status_code == 200, merged.text
            direct = httpx_post(whole.url, {"queries": queries})
            for got, expected in zip(merged.json()["batch"], direct["batch"], strict=True):
                for key in ("results", "opponents"):
                    if key in expected:
                        assert [r["index"] for r in got[key]] == [r["index"] for r in expected[key]]
                        assert [r["id"] for r in got[key]] == [r["id"] for r in expected[key]]
                        np.testing.assert_allclose(
                            [r["score"] for r in got[key]],
                            [r["score"] for r in expected[key]],
                            rtol=1e-5,
                        )
                assert got["query"].get("matching") == expected["query"].get("matching")
            assert merged.json()["batch"][2]["query"]["matching"] > 0
            assert merged.json()["coverage"] == {
                "shards": 2,
                "answered": 2,
                "missing": [],
                "partial": False,
            }
            assert coordinator.get("/readyz").status_code == 200
            single = {"prompt": "the market", "completion": "shares rose more", "top_k": 5}
            times = {"coordinator": [], "single server": []}
            for _ in range(15):
                began = time.perf_counter()
                coordinator.post("/v1/attributions", json=single)
                times["coordinator"].append(time.perf_counter() - began)
                began = time.perf_counter()
                httpx_post(whole.url, single)
                times["single server"].append(time.perf_counter() - began)
            medians = {k: round(1000 * statistics.median(v[3:]), 1) for k, v in times.items()}
            print(f"\ncoordinator overhead (ms, medians of 12): {medians}")
            assert coordinator.post("/v1/attributions", json={"completion": ""}).status_code == 422
        b.__exit__(None, None, None)  # shard 1 goes down
        with TestClient(
            create_coordinator_app(CoordinatorSettings(shards=[a.url, b.url]))
        ) as strict:
            failed = strict.post("/v1/attributions", json=queries[0])
            assert failed.status_code == 503 and b.url in failed.json()["detail"]
            assert failed.headers["retry-after"] == "1"
        partial_settings = CoordinatorSettings(shards=[a.url, b.url], allow_partial=True)
        with TestClient(create_coordinator_app(partial_settings)) as lenient:
            answer = lenient.post("/v1/attributions", json=queries[0]).json()
            assert answer["coverage"]["partial"] is True and answer["coverage"]["answered"] == 1
            with IndexReader(shard_path(sharded, 0, 2)) as shard0:
                assert all(r["index"] < shard0.n_examples for r in answer["results"])


def httpx_post(url, body):
    import httpx

    response = httpx.post(f"{url}/v1/attributions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_two_process_kronecker_build_equals_single_process(model_dir, data_file, tmp_path):
    """EK-FAC: the pre-pass sample spans both shards; A, S and the moments are summed."""
    extra = ("--curvature", "ekfac", "--covariance-sample", "9", "--damping", "trace:0.1")
    single, sharded = tmp_path / "single.h5", tmp_path / "sharded.h5"
    assert index_main(build_args(model_dir, data_file, single) + list(extra)) == 0
    result = torchrun(build_args(model_dir, data_file, sharded) + list(extra))
    assert result.returncode == 0, result.stderr[-3000:]
    with IndexReader(single) as one, IndexReader(sharded) as two:
        assert two.curvature_kind == "ekfac"
        assert torch.equal(
            bits(one.rows(0, one.n_examples)),
            bits(two.rows(0, two.n_examples)),
        )
        for i in range(len(one.layers)):
            a, b = one.curvature(i), two.curvature(i)
            for basis, values in (("basis_in", "values_in"), ("basis_out", "values_out")):
                # A and S themselves (eigenvectors of near-equal eigenvalues may rotate).
                qa, qb = getattr(a, basis).double(), getattr(b, basis).double()
                ma = qa @ torch.diag(getattr(a, values).double()) @ qa.T
                mb = qb @ torch.diag(getattr(b, values).double()) @ qb.T
                torch.testing.assert_close(ma, mb, rtol=1e-4, atol=1e-6 * float(ma.abs().max()))
            assert float(a.eigvals.sum()) == pytest.approx(float(b.eigvals.sum()), rel=1e-4)
            assert a.damping == pytest.approx(b.damping, rel=1e-5)
        gen = torch.Generator().manual_seed(3)
        grads = {
            s.name: torch.randn(2, s.d1 * s.d2, generator=gen, dtype=torch.float32)
            for s in one.layers
        }
        tops = []
        for reader in (one, two):
            hq = {
                s.name: reader.curvature(i).precondition(grads[s.name]).reshape(2, s.d1, s.d2)
                for i, s in enumerate(reader.layers)
            }
            rows = reader.values(0, reader.n_examples)
            tops.append(score_block(reader.layout, rows, ScanQuery(hq)).topk(5).indices)
        assert torch.equal(tops[0], tops[1])
        assert two.verify() == []
