"""torch's own threads around the compiled kernels."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def serial_torch() -> Iterator[None]:
    """The scan's own torch work (merging each block's scores) on this thread alone: the
    kernel's threads use every core, and torch's OpenMP workers, which spin for a while
    after each parallel region, would take one of them (measured: 1 M rows 622–659 →
    496–587 ms median with the workers kept asleep). One thread runs featurization and
    scans, so nothing else runs torch meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
