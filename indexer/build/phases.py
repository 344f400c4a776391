"""The build's write phases: start or resume the ``.partial`` file, the factor pass, finalize.

The curvature phase, between the factor pass and finalize, is ``indexer.build.curvature_phase``.
Every phase records what it completed in the journal and stops at named crash points
(``indexer.build.faults``), so a killed build resumes exactly where it stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from lorif_serve.errors import DifferentBuildError
from lorif_serve.indexer.build.config import differing_fields
from lorif_serve.indexer.build.faults import crash_point
from lorif_serve.indexer.build.journal import Journal
from lorif_serve.indexer.build.plan import BuildPlan, identity_view
from lorif_serve.indexer.build.space import check_space, required_bytes
from lorif_serve.indexer.build.sums import GradientSums, forget_sums_before, load_sums, save_sums
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.indexer.store.writer import RawWriter, create_index_file


def open_build(plan: BuildPlan) -> tuple[RawWriter, Journal]:
    """Resume the plan's ``.partial`` file if its journal says it was created, else start anew."""
    check_space(
        plan.partial, required_bytes(plan.examples, plan.specs, plan.curvature_ranks, plan.config)
    )
    journal = Journal(plan.journal_path)
    if journal.created and plan.partial.exists():
        _check_same_setup(plan)
        return RawWriter(plan.partial), journal
    for stale in (plan.partial, plan.journal_path):
        stale.unlink(missing_ok=True)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
    columns: dict[str, Sequence[Any]] = {
        "id": [e.id for e in plan.examples],
        "text": [e.text for e in plan.examples],
        "tokens": [len(e.tokens) for e in plan.examples],
        "metadata": [e.metadata for e in plan.examples],
    }
    create_index_file(
        plan.partial,
        plan.metadata,
        plan.specs,
        plan.projections,
        plan.curvature_ranks,
        columns,
        plan.config.dtype,
        plan.config.curvature,
    )
    crash_point("after-create")
    journal = Journal(plan.journal_path)
    journal.append(event="created")
    return RawWriter(plan.partial), journal


def _check_same_setup(plan: BuildPlan) -> None:
    with IndexReader(plan.partial) as saved:  # checksums are not written yet: no verify
        diffs = differing_fields(identity_view(saved.metadata), identity_view(plan.metadata))
    if diffs:
        raise DifferentBuildError(
            f"{plan.partial} was started with a different setup; differing fields: "
            + "; ".join(diffs)
            + ". Delete the .partial files or use the original settings."
        )


def factor_phase(
    plan: BuildPlan, writer: RawWriter, journal: Journal, sums: GradientSums | None = None
) -> None:
    """Projected gradients → rank-c factors → rows, from the last journaled row on.

    ``sums`` (a curvature fitted to the dense gradients) sees every batch first, may replace
    it by what should be stored (whitened gradients), and is checkpointed with every flushed
    row block.
    """
    capture = ProjectedGradients(plan.model, {p.name: p for p in plan.projections})
    layout, device = plan.layout, plan.device
    n, size, start = len(plan.examples), plan.config.batch_size, journal.rows_done
    if sums is not None and start > 0:
        load_sums(plan, sums, start)
    since_flush, flushes, tokens_done = 0, 0, 0
    bar = tqdm(
        total=n,
        initial=start,
        unit="ex",
        desc="factors",
        disable=not plan.progress,
        mininterval=1.0,
    )
    began = time.perf_counter()
    for first in range(start, n, size):
        chunk = plan.examples[first : first + size]
        batch = collate([e.tokens for e in chunk], [e.loss_start for e in chunk]).to(device)
        grads, _ = capture(batch)
        if sums is not None:
            grads = sums.observe(grads)
        writer.write_rows(first, layout.pack(grads))
        since_flush += len(chunk)
        tokens_done += sum(len(e.tokens) for e in chunk)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{tokens_done / max(time.perf_counter() - began, 1e-9):,.0f}")
        if since_flush >= plan.config.checkpoint_rows or first + size >= n:
            writer.flush()
            done = min(first + size, n)
            if sums is not None:
                save_sums(plan, sums, done)
            journal.append(event="rows", done=done)
            if sums is not None:
                forget_sums_before(plan, done)
            since_flush, flushes = 0, flushes + 1
            crash_point(f"rows:{flushes}")
    bar.close()


def finalize(plan: BuildPlan, writer: RawWriter) -> None:
    """Checksums, fsync and the atomic rename; then the journal and solver state go."""
    crash_point("before-rename")
    writer.finalize(plan.out)
    crash_point("after-rename")
    clean_up(plan)


def clean_up(plan: BuildPlan) -> None:
    """Remove the journal and solver checkpoints (a crash after the rename leaves them)."""
    plan.journal_path.unlink(missing_ok=True)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
