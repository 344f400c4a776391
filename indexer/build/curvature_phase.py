"""The build's curvature phase: Kronecker sums, or eigensolver passes over the stored factors.

Every pass reads the rows written so far once, for all layers at once, and is journaled
with the solver state so a killed build resumes at the next pass. In a distributed build
the per-pass accumulators and the trace are summed across ranks before each pass ends,
and all ranks resume from the earliest pass any of them completed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from lorif_serve.indexer.build.faults import crash_point
from lorif_serve.indexer.build.journal import Journal, atomic_write_arrays, read_arrays
from lorif_serve.indexer.build.plan import BuildPlan
from lorif_serve.indexer.build.sums import GradientSums
from lorif_serve.indexer.core.curvature import RandomizedEigenSolver
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.indexer.store.writer import RawWriter

BLOCK_ROWS = 2048


def _solvers(plan: BuildPlan) -> list[RandomizedEigenSolver]:
    config = plan.config
    return [
        RandomizedEigenSolver(
            s.dim, rank, config.oversample, config.power_iters, seed=config.seed + i
        )
        for i, (s, rank) in enumerate(zip(plan.specs, plan.curvature_ranks, strict=True))
    ]


def _load(plan: BuildPlan, solvers: Sequence[RandomizedEigenSolver], passes: int) -> None:
    state = read_arrays(plan.state_dir / f"pass-{passes}.npz")
    for i, solver in enumerate(solvers):
        prefix = f"{i}/"
        solver.load_state(
            {
                k[len(prefix) :]: torch.from_numpy(v)
                for k, v in state.items()
                if k.startswith(prefix)
            }
        )


def _save(plan: BuildPlan, solvers: Sequence[RandomizedEigenSolver], passes: int) -> None:
    plan.state_dir.mkdir(exist_ok=True)
    arrays = {f"{i}/{k}": v.numpy() for i, s in enumerate(solvers) for k, v in s.state().items()}
    atomic_write_arrays(plan.state_dir / f"pass-{passes}.npz", arrays)
    # Keep the previous pass too: another rank may have to resume from it.
    (plan.state_dir / f"pass-{passes - 2}.npz").unlink(missing_ok=True)


def curvature_phase(
    plan: BuildPlan, writer: RawWriter, journal: Journal, sums: GradientSums | None = None
) -> None:
    """The curvature written to the file: from the sums of the factor pass (Kronecker,
    Nyström), or from every eigensolver pass over the stored rows not yet journaled."""
    written = journal.last("curvature_written") is not None
    if plan.dist is not None:
        written = plan.dist.minimum(int(written)) == 1  # every rank must join the collectives
    if written:
        return
    if sums is not None:
        for i, curvature in enumerate(sums.curvatures()):
            writer.write_curvature(i, curvature)
    else:
        _woodbury(plan, writer, journal)
    writer.flush()
    journal.append(event="curvature_written")
    crash_point("curvature-written")


def _woodbury(plan: BuildPlan, writer: RawWriter, journal: Journal) -> None:
    dist = plan.dist
    solvers = _solvers(plan)
    done = journal.curvature_passes_done
    if dist is not None:
        done = dist.minimum(done)
    if done:
        _load(plan, solvers, done)
    total = solvers[0].passes_total
    with IndexReader(plan.partial) as reader:
        for pass_index in range(done, total):
            _stream_pass(plan, reader, solvers, f"curvature pass {pass_index + 1}/{total}")
            if pass_index + 1 < total:  # the last pass's result is the curvature itself
                _save(plan, solvers, pass_index + 1)
                journal.append(event="curvature_pass", done=pass_index + 1)
                crash_point(f"curvature-pass:{pass_index + 1}")
    for i, solver in enumerate(solvers):
        writer.write_curvature(i, solver.result(plan.config.damping)[0])


def _stream_pass(
    plan: BuildPlan, reader: IndexReader, solvers: Sequence[RandomizedEigenSolver], label: str
) -> None:
    """One read of every stored row, all layers at once; sums across ranks when sharded."""
    dtype = torch.float64 if plan.config.precision == "float64" else torch.float32
    layout, n = plan.layout, len(plan.examples)
    for first in tqdm(
        range(0, n, BLOCK_ROWS),
        desc=label,
        unit="block",
        disable=not plan.progress,
        mininterval=1.0,
    ):
        block = reader.values(first, min(first + BLOCK_ROWS, n), dtype).to(plan.device)
        for spec, solver in zip(plan.specs, solvers, strict=True):
            solver.accumulate(layout.gradients(spec, block))
    for solver in solvers:
        if plan.dist is not None:
            solver.reduce(plan.dist.all_reduce)
        solver.finish_pass()
