"""A build killed with SIGKILL and rerun equals an uninterrupted build, bit for bit."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from lorif_serve.indexer.cli import main
from lorif_serve.indexer.store import schema
from tests import builders


def build_args(model_dir, data_file, out, *extra):
    return builders.build_args(
        model_dir,
        data_file,
        out,
        *extra,
        factor_rank=2,
        curvature="factors",  # the Woodbury kind: its eigensolver passes are crash points too
        damping="trace",
        curvature_rank=8,
        max_tokens=8,
        batch_size=4,
        checkpoint_rows=8,
    )


def run_cli(args, crash_at=None):
    env = {k: v for k, v in os.environ.items() if k != "LORIF_CRASH_AT"}
    if crash_at:
        env["LORIF_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def compared_datasets(path):
    with h5py.File(path, "r") as f:
        kind = schema.curvature_kind(json.loads(f.attrs[schema.ATTR_METADATA]))
        names = list(schema.ROW_DATASETS)
        for i in range(len(f[schema.LAYERS_GROUP])):
            names += schema.curvature_datasets(i, kind)
        return {name: f[name][...] for name in names}


@pytest.fixture(scope="module")
def reference(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert main(build_args(model_dir, data_file, out)) == 0
    return compared_datasets(out)


@pytest.mark.parametrize(
    "crash_at", ["after-create", "rows:2", "curvature-pass:3", "curvature-written", "before-rename"]
)
def test_resume_after_sigkill_equals_uninterrupted(
    model_dir, data_file, tmp_path, reference, crash_at
):
    out = tmp_path / "idx.h5"
    crashed = run_cli(build_args(model_dir, data_file, out), crash_at)
    assert crashed.returncode == -9, crashed.stderr
    assert not out.exists() and out.with_name("idx.h5.partial").exists()
    resumed = run_cli(build_args(model_dir, data_file, out))
    assert resumed.returncode == 0, resumed.stderr
    if crash_at == "rows:2":
        assert "resumed from row    16" in resumed.stdout
    got = compared_datasets(out)
    for name, expected in reference.items():
        assert np.array_equal(got[name], expected), name
    assert not out.with_name("idx.h5.partial").exists()
    assert not out.with_name("idx.h5.partial.journal").exists()
    assert main(["verify", str(out)]) == 0


KRONECKER = ("--curvature", "ekfac", "--factor-metric", "whitened", "--covariance-sample", "12")
# (later flags win: these override the Woodbury settings of build_args)


@pytest.fixture(scope="module")
def kronecker_reference(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("kref") / "ref.h5"
    assert main(build_args(model_dir, data_file, out, *KRONECKER)) == 0
    return compared_datasets(out)


@pytest.mark.parametrize("crash_at", ["kronecker-bases", "rows:2", "curvature-written"])
def test_kronecker_resume_after_sigkill_equals_uninterrupted(
    model_dir, data_file, tmp_path, kronecker_reference, crash_at
):
    out = tmp_path / "idx.h5"
    args = build_args(model_dir, data_file, out, *KRONECKER)
    assert run_cli(args, crash_at).returncode == -9
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    got = compared_datasets(out)
    for name, expected in kronecker_reference.items():
        assert np.array_equal(got[name], expected), name
    assert main(["verify", str(out)]) == 0


def test_crash_after_rename_then_rerun_reports_complete(model_dir, data_file, tmp_path):
    out = tmp_path / "idx.h5"
    assert run_cli(build_args(model_dir, data_file, out), "after-rename").returncode == -9
    rerun = run_cli(build_args(model_dir, data_file, out))
    assert rerun.returncode == 0 and "already complete" in rerun.stdout
    assert not out.with_name("idx.h5.partial.journal").exists()


def test_resume_with_different_config_names_the_fields(model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "idx.h5"
    assert run_cli(build_args(model_dir, data_file, out), "rows:1").returncode == -9
    args = build_args(model_dir, data_file, out)
    args[args.index("--factor-rank") + 1] = "1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "config.factor_rank: 2 → 1" in err and "different setup" in err
    # The partial build is untouched and still resumes with the original settings.
    assert main(build_args(model_dir, data_file, out)) == 0


def test_existing_index_from_another_build_is_not_overwritten(
    model_dir, data_file, tmp_path, capsys
):
    out = tmp_path / "idx.h5"
    assert main(build_args(model_dir, data_file, out)) == 0
    before = out.read_bytes()
    assert main(build_args(model_dir, data_file, out, "--seed", "3")) == 2
    assert "already exists from a different build" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_ctrl_c_stops_cleanly_and_resumes(model_dir, data_file, tmp_path, reference):
    out = tmp_path / "idx.h5"
    env = {**os.environ, "LORIF_CRASH_AT": "rows:1", "LORIF_CRASH_SIGNAL": "SIGINT"}
    interrupted = subprocess.run(
        [sys.executable, "-m", "indexer", *build_args(model_dir, data_file, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert interrupted.returncode == 130
    assert "interrupted; progress is saved: rerun the same command to resume" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    resumed = run_cli(build_args(model_dir, data_file, out))
    assert resumed.returncode == 0 and "resumed from row    8" in resumed.stdout
    got = compared_datasets(out)
    assert all(np.array_equal(got[name], expected) for name, expected in reference.items())


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder):
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (64 << 10))
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_is_a_clear_error_and_the_build_resumes(
    model_dir, data_file, small_disk, reference
):
    out = small_disk / "idx.h5"
    assert run_cli(build_args(model_dir, data_file, out), "rows:1").returncode == -9
    filler = fill(small_disk)  # the disk fills up while the build is down
    full = run_cli(build_args(model_dir, data_file, out))
    assert full.returncode == 2 and "not enough disk space" in full.stderr, full.stderr
    assert "Traceback" not in full.stderr
    assert out.with_name("idx.h5.partial").exists()  # nothing lost
    filler.unlink()  # space is freed
    resumed = run_cli(build_args(model_dir, data_file, out))
    assert resumed.returncode == 0, resumed.stderr
    got = compared_datasets(out)
    assert all(np.array_equal(got[name], expected) for name, expected in reference.items())


def test_disk_full_while_writing_is_reported(model_dir, data_file, tmp_path, monkeypatch, capsys):
    import errno

    from lorif_serve.indexer.build import pipeline

    def no_space(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "factor_phase", no_space)
    assert main(build_args(model_dir, data_file, tmp_path / "x.h5")) == 2
    assert "out of disk space while writing" in capsys.readouterr().err


@pytest.mark.slow
def test_random_sigkills_until_done(model_dir, data_file, tmp_path, reference):
    """Kill the build at random moments (any phase) until it completes; the result is exact."""
    import random
    import time

    rng = random.Random(7)
    began = time.perf_counter()
    assert run_cli(build_args(model_dir, data_file, tmp_path / "timed.h5")).returncode == 0
    whole = time.perf_counter() - began  # start-up plus the build itself
    out = tmp_path / "idx.h5"
    kills = 0
    while not out.exists():
        command = [sys.executable, "-m", "indexer", *build_args(model_dir, data_file, out)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # The first 8 attempts die at a random moment late in their run (past start-up).
            process.wait(timeout=rng.uniform(0.6, 1.0) * whole if kills < 8 else None)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            kills += 1
    print(f"\nrandom kills survived: {kills}")
    got = compared_datasets(out)
    assert all(np.array_equal(got[name], expected) for name, expected in reference.items())
