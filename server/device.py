"""One thread owns all tensor work: loading, featurization and scans.

Measured on CPU: when the model is loaded on the main thread and scans run on another,
each thread gets its own OpenMP team and the two teams fight for the cores (featurize
11 → 20 ms, scan 10 → 40 ms on the demo index). Doing everything on one thread avoids it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_host_memory() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim``); False where unavailable.

    glibc keeps freed memory in its arenas, so after one long query the process would stay
    at that query's peak RSS. Trimming costs milliseconds and only runs after large passes.
    """
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    return bool(trim(0))


class DeviceThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the device thread and wait for its result (exceptions propagate)."""
        return self._executor.submit(fn, *args).result()

    def start(self, loop: Callable[[], None]) -> Future[None]:
        """Run a long loop (the batcher) on the device thread."""
        return self._executor.submit(loop)
