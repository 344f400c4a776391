"""One thread owns all tensor work: loading, featurization and scans.

Measured on CPU: when the model is loaded on the main thread and scans run on another,
each thread gets its own OpenMP team and the two teams fight for the cores (featurize
11 → 20 ms, scan 10 → 40 ms on the demo index). Doing everything on one thread avoids it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DeviceThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the device thread and wait for its result (exceptions propagate)."""
        return self._executor.submit(fn, *args).result()

    def start(self, loop: Callable[[], None]) -> Future[None]:
        """Run a long loop (the batcher) on the device thread."""
        return self._executor.submit(loop)
