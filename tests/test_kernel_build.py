"""The scan kernel's C source builds on every x86 target it has a branch for.

A CPU without AMX (or without AVX-512) takes other ``#if`` branches than the machine that
last edited the source; a name declared in one branch only would fail there, and the engine
would quietly keep the slower torch path. So the source is compiled for each target here,
and where this CPU has AVX-512 VNNI the kernel must load with its bounded pass.
"""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from lorif_serve.server.kernels import build

X86 = platform.machine() in ("x86_64", "AMD64")
COMPILER = os.environ.get("CC") or "cc"
needs_x86_compiler = pytest.mark.skipif(
    not X86 or shutil.which(COMPILER) is None, reason="needs an x86 C compiler"
)

# generic, AVX2 only, AVX-512 VNNI without AMX, AVX-512 VNNI with AMX
TARGETS = ["x86-64", "x86-64-v3", "icelake-server", "sapphirerapids"]


@needs_x86_compiler
@pytest.mark.parametrize("target", TARGETS)
def test_the_source_compiles_for_each_target(target, tmp_path):
    for name, text in build._sources().items():
        (tmp_path / name).write_bytes(text)
    flags = [f for f in build._flags() if f not in ("-march=native", "-shared")]
    done = subprocess.run(
        [COMPILER, *flags, f"-march={target}", "-fsyntax-only", str(tmp_path / build._SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "bad value" in done.stderr:
        pytest.skip(f"{COMPILER} does not know -march={target}")
    assert done.returncode == 0, done.stderr[-2000:]


def _has_vnni() -> bool:
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@needs_x86_compiler
@pytest.mark.skipif(not _has_vnni(), reason="this CPU has no AVX-512 VNNI")
@pytest.mark.skipif(os.environ.get("LORIF_FUSED_KERNEL") == "0", reason="kernel disabled")
def test_the_kernel_loads_with_its_bounded_pass_on_this_cpu():
    status = build.load_kernel()
    assert status.kernel is not None, status.reason
    assert status.kernel.has_bounded
