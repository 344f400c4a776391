"""Which CPU scan an engine runs (docs/server.md, "Scan kernels"): ``auto`` takes the
bounded scan where the compiled kernel has it, else the fused one, else the torch path; on a
small index the exact scan, from the break-even timed at start-up (``break_even``)."""

from __future__ import annotations

import torch

from lorif_serve.errors import ConfigError
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.break_even import by_size
from lorif_serve.server.fused_scan import FusedScanner, every_layer
from lorif_serve.server.kernels.build import load_kernel

SCAN_KERNELS = ("auto", "bounded", "fused", "torch")


def choose_scanner(
    requested: str, device: torch.device, reader: IndexReader, resident: torch.Tensor | None
) -> tuple[FusedScanner | None, str, str]:
    """(scanner or None for the torch path, the kernel's name, why).

    ``auto`` takes the fastest available; naming an unavailable kernel is a ConfigError.
    """
    if requested not in SCAN_KERNELS:
        raise ConfigError(f"scan kernel must be one of {SCAN_KERNELS}, got {requested!r}")
    if requested == "torch":
        return None, "torch", "requested"
    status = None
    if device.type == "cpu" and reader.codec.quantized:
        status = load_kernel()
    if status is None or status.kernel is None:
        why = status.reason if status is not None else "compiled kernels read int8 rows on a CPU"
        if requested != "auto":
            raise ConfigError(f"scan kernel {requested!r} is unavailable: {why}")
        return None, "torch", why
    bounded = requested in ("auto", "bounded") and status.kernel.has_bounded
    if requested == "bounded" and not bounded:
        raise ConfigError("scan kernel 'bounded' needs AVX-512 VNNI or AVX2 here; use 'fused'")
    scanner = FusedScanner(status.kernel, reader, resident, bounded)
    every = every_layer(reader)
    scanner.warm(every)  # the norms and tiles now, rather than in the first query
    if requested == "auto" and bounded:
        return scanner, *by_size(scanner, every, reader.n_examples, status.reason)
    return scanner, "bounded" if bounded else "fused", status.reason
