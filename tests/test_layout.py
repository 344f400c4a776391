"""What an installation contains and what each part needs: one package, light client."""

import subprocess
import sys
import zipfile

import pytest

BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None\n"


def run_python(code, *blocked):
    """Run ``code`` in a fresh interpreter in which importing ``blocked`` modules fails."""
    script = BLOCK.format(names=list(blocked)) + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_the_wheel_installs_one_top_level_package(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [".", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"lorif_serve"}
    for module in ("indexer/core/query.py", "server/routes.py", "client/protocol.py"):
        assert f"lorif_serve/{module}" in names  # the links were followed, not copied as links
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert b"lorif-index = lorif_serve.entrypoints:index" in entry_points


def test_the_client_imports_without_the_heavy_dependencies():
    code = "from lorif_serve.client import Client, AsyncClient\nprint('ok')"
    result = run_python(code, "torch", "numpy", "h5py", "transformers", "fastapi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(("entry", "extra"), [("index", "indexer"), ("serve", "server")])
def test_console_scripts_name_the_missing_extra(entry, extra):
    code = f"from lorif_serve.entrypoints import {entry}\n{entry}()"
    result = run_python(code, "torch")
    assert result.returncode == 2
    assert f"pip install 'lorif-serve[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_error_family_has_one_root():
    from lorif_serve import errors
    from lorif_serve.client.errors import AttributionError

    families = [
        errors.ConfigError,
        errors.DataError,
        errors.ModelError,
        errors.IndexFileError,
        errors.BuildError,
        errors.StartupError,
        AttributionError,
    ]
    assert all(issubclass(family, errors.LorifError) for family in families)
