"""A new user's mistakes on the indexer's command line: one clear line, no traceback."""

import subprocess
import sys

import pytest

from lorif_serve.indexer.cli import main
from tests.builders import build_args, build_small_index


def error_of(capsys, args):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_missing_output_directory(model_dir, data_file, tmp_path, capsys):
    err = error_of(capsys, build_args(model_dir, data_file, tmp_path / "nodir" / "x.h5"))
    assert f"output directory {tmp_path / 'nodir'} does not exist" in err


def test_model_directory_without_config(data_file, tmp_path, capsys):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    err = error_of(capsys, build_args(empty, data_file, tmp_path / "x.h5"))
    assert "not a Hugging Face model directory (no config.json)" in err


def test_empty_jsonl(model_dir, tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    err = error_of(capsys, build_args(model_dir, data, tmp_path / "x.h5"))
    assert f"0 records in {data}" in err


def test_projection_factor_wider_than_a_layer(model_dir, data_file, tmp_path, capsys):
    args = build_args(model_dir, data_file, tmp_path / "x.h5") + ["--projection-factor", "100000"]
    err = error_of(capsys, args)
    assert "projection_factor 100000 is larger than the narrowest tracked layer" in err


@pytest.mark.parametrize("command", ["info", "verify"])
def test_output_into_a_closed_pipe_is_not_an_error(model_dir, data_file, tmp_path, command):
    index = build_small_index(model_dir, data_file, tmp_path / "x.h5")
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer", command, str(index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head` exiting before we write
    err = process.stderr.read().decode()
    assert process.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_skipped_records_are_listed_by_the_build_and_by_info(model_dir, tmp_path, capsys):
    import json

    data = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": "the market rose more"}) for i in range(3)]
    data.write_text("\n".join([*lines, '{"text": "x",}', json.dumps({"text": ""})]) + "\n")
    out = tmp_path / "mixed.h5"
    assert main(build_args(model_dir, data, out, max_tokens=10)) == 0
    summary = capsys.readouterr().out
    assert "skipped records     2:" in summary
    assert "mixed.jsonl:4: invalid JSON at column 14 (Expecting property name" in summary
    assert "mixed.jsonl:5: 'text' is empty or not a string" in summary
    assert main(["info", str(out), "--skipped"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("2 skipped records in") and "mixed.jsonl:4: invalid JSON" in listed


def test_read_only_output_directory(model_dir, data_file, tmp_path, capsys, monkeypatch):
    """As root every directory is writable, so the check is exercised by denying access."""
    import os

    real = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if mode == os.W_OK else real(path, mode)
    )
    err = error_of(capsys, build_args(model_dir, data_file, tmp_path / "x.h5"))
    assert f"cannot write x.h5.partial in {tmp_path}: permission denied" in err
