"""Crash-safe progress records for a build: an fsynced JSON-lines journal and atomic files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lorif_serve.indexer.store.raw import fsync_dir


def atomic_write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz so that a reader sees either the old file or the complete new one."""
    temp = path.with_suffix(".tmp.npz")
    with open(temp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


class Journal:
    """Append-only log of completed steps. A torn last line (crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # the step it describes never completed

    def append(self, **event: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.events.append(event)

    def last(self, kind: str) -> dict[str, Any] | None:
        for event in reversed(self.events):
            if event.get("event") == kind:
                return event
        return None

    @property
    def created(self) -> bool:
        return self.last("created") is not None

    @property
    def rows_done(self) -> int:
        event = self.last("rows")
        return int(event["done"]) if event else 0

    @property
    def curvature_passes_done(self) -> int:
        event = self.last("curvature_pass")
        return int(event["done"]) if event else 0
