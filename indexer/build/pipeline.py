"""``build_index``: examples → projected gradients → factors → curvature → index file."""

from __future__ import annotations

import time
from pathlib import Path

from lorif_serve.errors import BuildError
from lorif_serve.indexer.build.config import IndexConfig
from lorif_serve.indexer.build.curvature_phase import curvature_phase
from lorif_serve.indexer.build.distributed import Dist, shard_path, shard_rows
from lorif_serve.indexer.build.kronecker_phase import KroneckerSums, fit_bases
from lorif_serve.indexer.build.phases import factor_phase, finalize, open_build
from lorif_serve.indexer.build.plan import BuildPlan, plan_build
from lorif_serve.indexer.build.space import check_output, disk_full
from lorif_serve.indexer.build.summary import BuildSummary, existing_summary, summarize
from lorif_serve.indexer.build.sums import GradientSums, NystromSums
from lorif_serve.indexer.inputs.examples import Example, make_examples
from lorif_serve.indexer.inputs.lm import LoadedModel, load_model
from lorif_serve.indexer.inputs.records import BadRecord, read_records
from lorif_serve.indexer.store.manifest import write_manifest


def build_index(
    model: str | Path | LoadedModel,
    data: str | Path | list[Example],
    out: str | Path,
    config: IndexConfig | None = None,
    progress: bool = True,
    dist: Dist | None = None,
) -> BuildSummary:
    """Build (or resume building) an index at ``out``.

    Args:
        model: a model directory, a ``.gguf`` file, or an already loaded model.
        data: a data path (see ``indexer.inputs.records.read_records``) or prepared examples.
        out: the final ``.h5`` path; work happens in ``out.partial`` until it is complete.
        config: build settings (defaults if omitted).
        progress: show progress bars on stderr.
        dist: this process's rank in a distributed build (``indexer.build.distributed``): it
            writes its slice to a shard file and rank 0 writes ``out`` as a manifest.

    Raises:
        BuildError: resume with different settings, or ``out`` exists from another build.
        DataError, ModelError, ConfigError: unusable data, model or settings.
    """
    config = config or IndexConfig()
    out = Path(out)
    check_output(out)
    times: dict[str, float] = {}
    began = time.perf_counter()
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, _device(config, dist), config.precision)
    )
    times["load"] = time.perf_counter() - began
    began = time.perf_counter()
    examples, bad, source = _examples(data, loaded, config)
    rows = (0, len(examples))
    if dist is not None:
        rows = shard_rows(len(examples), config.batch_size, dist.rank, dist.world)
    target = out if dist is None else shard_path(out, dist.rank, dist.world)
    plan = plan_build(loaded, examples, bad, source, target, config, progress, dist, rows)
    times["prepare"] = time.perf_counter() - began
    if out.exists():
        return existing_summary(out, plan, times)
    resumed_from = 0
    if not target.exists():  # a rank of a distributed rerun may have finished its shard
        resumed_from = _run_phases(plan, times)
    if dist is not None:
        dist.barrier()  # every shard is complete
        if dist.rank == 0:
            write_manifest(out, [shard_path(out, r, dist.world) for r in range(dist.world)])
        dist.barrier()
    summary = summarize(out, plan, times)
    summary.bad_records = [str(b) for b in bad]
    summary.resumed_from_row = resumed_from
    return summary


def _examples(
    data: str | Path | list[Example], loaded: LoadedModel, config: IndexConfig
) -> tuple[list[Example], list[BadRecord], str]:
    if isinstance(data, list):
        return data, [], "<in-memory examples>"
    examples, bad = make_examples(
        read_records(data), loaded.tokenizer, config.max_tokens, config.on_bad_record, str(data)
    )
    return examples, bad, str(Path(data).resolve())


def _run_phases(plan: BuildPlan, times: dict[str, float]) -> int:
    """Factors, curvature, finalize; returns the row the factor phase resumed from."""
    try:
        return _timed_phases(plan, times)
    except PermissionError as exc:
        raise BuildError(f"cannot write {plan.partial}: permission denied") from exc
    except OSError as exc:
        if not disk_full(exc):
            raise
        raise BuildError(
            f"out of disk space while writing {plan.out}: {exc}. The partial build is kept: "
            "free space and rerun the same command to resume."
        ) from exc


def _timed_phases(plan: BuildPlan, times: dict[str, float]) -> int:
    began = time.perf_counter()
    writer, journal = open_build(plan)
    resumed_from = journal.rows_done
    try:
        sums: GradientSums | None = None
        if plan.kronecker:
            sums = KroneckerSums(plan, fit_bases(plan, journal))
            times["kronecker_factors"] = time.perf_counter() - began
            began = time.perf_counter()
        elif plan.config.curvature == "gradients":
            sums = NystromSums(plan)
        factor_phase(plan, writer, journal, sums)
        times["factors"] = time.perf_counter() - began
        began = time.perf_counter()
        curvature_phase(plan, writer, journal, sums)
        times["curvature"] = time.perf_counter() - began
        began = time.perf_counter()
        finalize(plan, writer)
        times["finalize"] = time.perf_counter() - began
    finally:
        writer.close()
    return resumed_from


def _device(config: IndexConfig, dist: Dist | None) -> str:
    return str(dist.device) if dist is not None and dist.device.type == "cuda" else config.device
