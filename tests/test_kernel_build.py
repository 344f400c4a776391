"""The scan kernel's C source builds on every x86 target it has a branch for.

A CPU without AMX (or without AVX-512) takes other ``#if`` branches than the machine that
last edited the source; a name declared in one branch only would fail there, and the engine
would quietly keep the slower torch path. So the source is compiled for each target here,
and where this CPU has AVX-512 VNNI or AVX2 the kernel must load with its bounded pass. On a
CPU with AVX-512, the AVX2 build is also made and the kernel tests run against it.
"""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorif_serve.server.kernels import build

X86 = platform.machine() in ("x86_64", "AMD64")
COMPILER = os.environ.get("CC") or "cc"
needs_x86_compiler = pytest.mark.skipif(
    not X86 or shutil.which(COMPILER) is None, reason="needs an x86 C compiler"
)

# generic, AVX2 only, AVX-512 without VNNI (the AVX2 pass), AVX-512 VNNI without AMX,
# AVX-512 VNNI with AMX
TARGETS = ["x86-64", "x86-64-v3", "skylake-avx512", "icelake-server", "sapphirerapids"]


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


CPU_FLAGS = set(build.cpu_flags().split())  # the line the kernel's cache key takes


def _cpu_has(*features: str) -> bool:
    return all(f in CPU_FLAGS for f in features)


AVX2 = ("avx2", "fma")
kernel_enabled = pytest.mark.skipif(
    os.environ.get("LORIF_FUSED_KERNEL") == "0", reason="kernel disabled"
)


@needs_x86_compiler
@kernel_enabled
@pytest.mark.skipif(
    not (_cpu_has("avx512_vnni") or _cpu_has(*AVX2)),
    reason="this CPU has neither AVX-512 VNNI nor AVX2",
)
def test_the_kernel_loads_with_its_bounded_pass_on_this_cpu():
    status = build.load_kernel()
    assert status.kernel is not None, status.reason
    assert status.kernel.has_bounded
    assert status.kernel.vector_bits == (512 if _cpu_has("avx512_vnni") else 256)


@needs_x86_compiler
@kernel_enabled
@pytest.mark.skipif(not _cpu_has("avx512f", *AVX2), reason="the AVX2 pass is the native one here")
def test_the_avx2_build_passes_the_kernel_tests(tmp_path, monkeypatch):
    monkeypatch.setenv("LORIF_KERNEL_MARCH", "x86-64-v3")
    monkeypatch.setenv("LORIF_KERNEL_CACHE", str(tmp_path))
    status = build.load_kernel()
    assert status.kernel is not None, status.reason
    assert status.kernel.has_bounded and status.kernel.vector_bits == 256
    tests = Path(__file__).with_name("test_scan_kernels.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:]
