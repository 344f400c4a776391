"""Machine description and result writing shared by every benchmark."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lorif_serve.server.break_even import median_seconds as timed_median
from lorif_serve.server.kernels.build import cpu_flags

RESULTS = Path(__file__).parent / "results"


_ISA = (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx2", "AVX2"))


def _model_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    cpu = _model_name() or platform.processor() or platform.machine()
    # the vector extensions the scan kernels choose between (their speeds differ by several x)
    flags = set(cpu_flags().split())
    if isa := [name for flag, name in _ISA if flag in flags]:
        cpu = f"{cpu} ({', '.join(isa)})"
    memory = 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(memory / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """The benchmarks' default: five timed calls after one untimed."""
    return timed_median(fn, repeats, warmup)


def write_result(name: str, data: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    m = data["machine"]
    header = (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
        + f"; {data['date']}.\n\n"
    )
    (RESULTS / f"{name}.md").write_text(header + table + "\n")
    print(header + table)
