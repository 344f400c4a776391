"""What a build reports: sizes, timings, and the check of an index that already exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorif_serve.errors import DifferentBuildError
from lorif_serve.indexer.build.config import differing_fields
from lorif_serve.indexer.build.phases import clean_up
from lorif_serve.indexer.build.plan import BuildPlan, identity_view
from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.store import schema
from lorif_serve.indexer.store.reader import IndexReader


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


def existing_summary(out: Path, plan: BuildPlan, times: dict[str, float]) -> BuildSummary:
    with IndexReader(out) as done:
        diffs = differing_fields(identity_view(done.metadata), identity_view(plan.metadata))
    if diffs:
        raise DifferentBuildError(
            f"{out} already exists from a different build: " + "; ".join(diffs)
        )
    clean_up(plan)  # a crash between the final rename and the cleanup leaves these behind
    summary = summarize(out, plan, times)
    summary.already_complete = True
    return summary


def summarize(out: Path, plan: BuildPlan, times: dict[str, float]) -> BuildSummary:
    itemsize = schema.STORAGE_DTYPES[plan.config.dtype][0].itemsize
    return BuildSummary(
        path=out,
        n_examples=plan.metadata["dataset"]["n"],
        n_layers=len(plan.specs),
        n_tokens=plan.metadata["dataset"]["tokens"],
        bytes_per_example=RowCodec(plan.layout, schema.torch_storage_dtype(plan.config.dtype)).width
        * itemsize,
        dense_bytes_per_example=sum(s.dim for s in plan.specs) * itemsize,
        file_bytes=_file_bytes(out),
        phase_seconds=times,
    )
