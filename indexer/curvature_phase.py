"""The build's curvature phase: streaming eigensolver passes over the stored factors.

Every pass reads the rows written so far once, for all layers at once, and is journaled
with the solver state so a killed build resumes at the next pass. In a distributed build
the per-pass accumulators and the trace are summed across ranks before each pass ends,
and all ranks resume from the earliest pass any of them completed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from .curvature import RandomizedEigenSolver
from .faults import crash_point
from .journal import Journal, atomic_write_arrays, read_arrays
from .reader import IndexReader
from .writer import RawWriter

if TYPE_CHECKING:
    from .build import _Build

BLOCK_ROWS = 2048


def _solvers(build: _Build) -> list[RandomizedEigenSolver]:
    config = build.config
    return [
        RandomizedEigenSolver(
            s.dim, rank, config.oversample, config.power_iters, seed=config.seed + i
        )
        for i, (s, rank) in enumerate(zip(build.specs, build.curvature_ranks, strict=True))
    ]


def _load(build: _Build, solvers: Sequence[RandomizedEigenSolver], passes: int) -> None:
    state = read_arrays(build.state_dir / f"pass-{passes}.npz")
    for i, solver in enumerate(solvers):
        prefix = f"{i}/"
        solver.load_state(
            {
                k[len(prefix) :]: torch.from_numpy(v)
                for k, v in state.items()
                if k.startswith(prefix)
            }
        )


def _save(build: _Build, solvers: Sequence[RandomizedEigenSolver], passes: int) -> None:
    build.state_dir.mkdir(exist_ok=True)
    arrays = {f"{i}/{k}": v.numpy() for i, s in enumerate(solvers) for k, v in s.state().items()}
    atomic_write_arrays(build.state_dir / f"pass-{passes}.npz", arrays)
    # Keep the previous pass too: another rank may have to resume from it.
    (build.state_dir / f"pass-{passes - 2}.npz").unlink(missing_ok=True)


def run_curvature(build: _Build, writer: RawWriter, journal: Journal) -> None:
    dist = build.dist
    written = journal.last("curvature_written") is not None
    if dist is not None:
        written = dist.minimum(int(written)) == 1  # every rank must join the collectives
    if written:
        return
    solvers = _solvers(build)
    done = journal.curvature_passes_done
    if dist is not None:
        done = dist.minimum(done)
    if done:
        _load(build, solvers, done)
    dtype = torch.float64 if build.config.precision == "float64" else torch.float32
    total = solvers[0].passes_total
    n = len(build.examples)
    with IndexReader(build.partial) as reader:
        for pass_index in range(done, total):
            blocks = range(0, n, BLOCK_ROWS)
            for first in tqdm(
                blocks,
                desc=f"curvature pass {pass_index + 1}/{total}",
                unit="block",
                disable=not build.progress,
                mininterval=1.0,
            ):
                block = reader.rows(first, min(first + BLOCK_ROWS, n)).to(build.device, dtype)
                for spec, solver in zip(build.specs, solvers, strict=True):
                    solver.accumulate(build.layout.gradients(spec, block))
            for solver in solvers:
                if dist is not None:
                    solver.reduce(dist.all_reduce)
                solver.finish_pass()
            if pass_index + 1 < total:  # the last pass's result is the curvature itself
                _save(build, solvers, pass_index + 1)
                journal.append(event="curvature_pass", done=pass_index + 1)
                crash_point(f"curvature-pass:{pass_index + 1}")
    for i, solver in enumerate(solvers):
        writer.write_curvature(i, solver.result(build.config.damping)[0])
    writer.flush()
    journal.append(event="curvature_written")
    crash_point("curvature-written")
