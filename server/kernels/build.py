"""Building and loading the compiled scan kernels.

``scan_int8.c`` (with the headers it includes) is built with the machine's C
compiler (``$CC``, else ``cc``) at ``-O3 -march=native`` (``$LORIF_KERNEL_MARCH`` instead of
``native`` where set) into a cache folder keyed by the
sources, the flags and the CPU's feature flags, then loaded with ctypes. Where no compiler
is found or the build fails, ``load_kernel`` returns no kernel with the reason, and the
engine keeps the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lorif_serve.server.kernels.fused import FusedInt8Scan

_SOURCE = "scan_int8.c"
# included by the source: written next to it, part of the key
_HEADERS = ("scan_amx.h", "scan_tiles.h", "scan_avx2.h")
_VERSION = 14  # lorif_kernel_version() of a matching build


def cache_folder() -> Path:
    """``$LORIF_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/lorif-serve/kernels`` (~/.cache)."""
    if os.environ.get("LORIF_KERNEL_CACHE"):
        return Path(os.environ["LORIF_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorif-serve" / "kernels"


def cpu_flags() -> str:
    """The CPU's feature-flags line from /proc/cpuinfo (else the processor's name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _flags() -> list[str]:
    # LORIF_KERNEL_MARCH: another target than this CPU's own (x86-64-v3: the AVX2 pass on a
    # CPU that has AVX-512, as the tests build it); it must be one this CPU can run
    march = os.environ.get("LORIF_KERNEL_MARCH") or "native"
    flags = ["-O3", f"-march={march}", "-fPIC", "-shared", "-std=c11"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mprefer-vector-width=512")  # full-width registers where AVX-512 exists
    return flags


def _sources() -> dict[str, bytes]:
    files = resources.files(__package__)
    return {name: files.joinpath(name).read_bytes() for name in (_SOURCE, *_HEADERS)}


def _build(compiler: str, sources: dict[str, bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        for name, text in sources.items():
            (Path(tmp) / name).write_bytes(text)
        src = Path(tmp) / _SOURCE
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *_flags(), "-o", str(built), str(src)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)  # atomic: concurrent builders never see half a library


@dataclass
class KernelStatus:
    kernel: FusedInt8Scan | None
    reason: str  # why it is unavailable, or where it was loaded from


def load_kernel() -> KernelStatus:
    """Compile (once per machine and source) and load the kernel; never raises."""
    if os.environ.get("LORIF_FUSED_KERNEL", "1") == "0":
        return KernelStatus(None, "disabled by LORIF_FUSED_KERNEL=0")
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return KernelStatus(None, f"no C compiler ({compiler!r} not on PATH)")
    sources = _sources()
    key = hashlib.sha256(
        b"".join(sources.values())
        + " ".join([compiler, *_flags(), cpu_flags(), platform.machine()]).encode()
    ).hexdigest()[:16]
    target = cache_folder() / f"scan_int8-{key}.so"
    try:
        if not target.exists():
            _build(compiler, sources, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"build failed: {exc} {detail.decode(errors='replace')[-300:]}".strip()
        return KernelStatus(None, reason)
    if library.lorif_kernel_version() != _VERSION:
        return KernelStatus(None, f"stale build at {target}")
    kernel = FusedInt8Scan(library)
    products = ", AMX tiles" if kernel.use_amx else ""
    return KernelStatus(kernel, f"compiled kernel {target}{products}")
