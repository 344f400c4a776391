"""Where the factors live while serving, and how long a scan block is."""

from __future__ import annotations

import psutil
import torch

from lorif_serve.errors import ConfigError

RESIDENCIES = ("auto", "gpu", "ram", "disk")


def default_block_rows(device: torch.device, residency: str) -> int:
    """Block sizes measured on the 1 M-row synthetic index (benchmarks/results/serving.md).

    CPU + ram: 1,024 rows keep the fp32 work buffer in cache (0.99 s vs 1.20 s at 8,192).
    CPU + disk: the reader thread competes for the cores; fewer, longer blocks cost less
    (1.5 s at 16,384 vs 2.6 s at 8,192 and 3.6 s at 1,024). GPU: long blocks amortize launches.
    """
    if device.type == "cuda":
        return 32768
    return 16384 if residency == "disk" else 1024


def choose_residency(
    requested: str, nbytes: int, device: torch.device, gpu_fraction: float, ram_fraction: float
) -> str:
    """``auto`` → the fastest residency whose copy fits the configured memory fraction."""
    if requested not in RESIDENCIES:
        raise ConfigError(f"residency must be one of {RESIDENCIES}, got {requested!r}")
    if requested == "gpu" and device.type != "cuda":
        raise ConfigError("residency 'gpu' needs a CUDA device")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= gpu_fraction * free:
            return "gpu"
    if nbytes <= ram_fraction * psutil.virtual_memory().available:
        return "ram"
    return "disk"
