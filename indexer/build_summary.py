"""What a build reports: sizes, timings, and the check of an index that already exists."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import schema
from .config import differing_fields
from .reader import IndexReader

if TYPE_CHECKING:
    from .build import _Build


@dataclass
class BuildSummary:
    path: Path
    n_examples: int
    n_layers: int
    n_tokens: int
    bytes_per_example: int
    dense_bytes_per_example: int
    file_bytes: int
    phase_seconds: dict[str, float] = field(default_factory=dict)
    bad_records: list[str] = field(default_factory=list)
    resumed_from_row: int = 0
    already_complete: bool = False


def _file_bytes(out: Path) -> int:
    with IndexReader(out) as reader:
        return out.stat().st_size + sum(shard.stat().st_size for shard in reader.shard_paths)


def existing_summary(out: Path, build: _Build, times: dict[str, float]) -> BuildSummary:
    from .build import BuildError, identity_view

    with IndexReader(out) as done:
        diffs = differing_fields(identity_view(done.metadata), identity_view(build.metadata))
    if diffs:
        raise BuildError(f"{out} already exists from a different build: " + "; ".join(diffs))
    # A crash between the final rename and the cleanup leaves these behind.
    build.journal_path.unlink(missing_ok=True)
    shutil.rmtree(build.state_dir, ignore_errors=True)
    summary = summarize(out, build, times)
    summary.already_complete = True
    return summary


def summarize(out: Path, build: _Build, times: dict[str, float]) -> BuildSummary:
    itemsize = schema.STORAGE_DTYPES[build.config.dtype][0].itemsize
    return BuildSummary(
        path=out,
        n_examples=build.metadata["dataset"]["n"],
        n_layers=len(build.specs),
        n_tokens=build.metadata["dataset"]["tokens"],
        bytes_per_example=build.layout.width * itemsize,
        dense_bytes_per_example=sum(s.dim for s in build.specs) * itemsize,
        file_bytes=_file_bytes(out),
        phase_seconds=times,
    )
