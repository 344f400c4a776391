"""The build pipeline: examples → projected gradients → factors → curvature → index file."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__
from .build_summary import BuildSummary, existing_summary, summarize
from .config import IndexConfig, differing_fields
from .curvature_phase import run_curvature
from .data import BadRecord, Example, examples_digest, make_examples, read_records
from .distributed import Dist, shard_path, shard_rows
from .factors import LayerSpec, RowLayout
from .faults import crash_point
from .hooks import ProjectedGradients, collate
from .journal import Journal
from .layers import find_layers
from .manifest import write_manifest
from .models import LoadedModel, load_model
from .projection import make_projection, projected_dims
from .reader import IndexReader
from .space import check_space, disk_full, required_bytes
from .writer import RawWriter, create_index_file

LOSS_DEFINITION = (
    "token-summed causal cross-entropy; text examples: every token after the first; "
    "prompt/completion examples: completion tokens only"
)


class BuildError(RuntimeError):
    """The build cannot proceed (e.g. a resume with a different config or model)."""


def layer_specs(model: torch.nn.Module, config: IndexConfig) -> list[LayerSpec]:
    specs = []
    for layer in find_layers(model, config.layers or None):
        d1, d2 = projected_dims(
            layer.in_features, layer.out_features, config.projection_factor, config.d1, config.d2
        )
        rank = min(config.factor_rank, d1, d2)
        specs.append(
            LayerSpec(layer.name, layer.in_features, layer.out_features, d1, d2, rank, config.dense)
        )
    return specs


def identity_view(metadata: dict[str, Any]) -> dict[str, Any]:
    """The fields a resume must match, flattened for readable differences."""
    view = {f"config.{k}": v for k, v in metadata["config"].items()}
    view |= {
        f"model.{k}": metadata["model"][k]
        for k in ("config_hash", "weights_hash", "tokenizer_hash")
    }
    view |= {"dataset.digest": metadata["dataset"]["digest"], "dataset.n": metadata["dataset"]["n"]}
    return view


class _Build:
    def __init__(
        self,
        loaded: LoadedModel,
        examples: list[Example],
        bad: list[BadRecord],
        data_source: str,
        out: Path,
        config: IndexConfig,
        progress: bool,
        dist: Dist | None = None,
        rows: tuple[int, int] | None = None,
    ) -> None:
        start, stop = rows if rows is not None else (0, len(examples))
        self.model, self.config, self.out = loaded.model, config, out
        self.examples = examples[start:stop]  # this process's rows
        self.progress, self.dist = progress, dist
        self.device = next(self.model.parameters()).device
        self.specs = layer_specs(self.model, config)
        self.layout = RowLayout(self.specs)
        self.projections = [
            make_projection(s.name, s.in_features, s.out_features, s.d1, s.d2, config.seed)
            for s in self.specs
        ]
        self.curvature_ranks = [min(config.curvature_rank, s.dim) for s in self.specs]
        self.partial = out.with_name(out.name + ".partial")
        self.journal_path = out.with_name(out.name + ".partial.journal")
        self.state_dir = out.with_name(out.name + ".partial.state")
        self.metadata: dict[str, Any] = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "software": {"name": "lorif-serve", "version": __version__, "torch": torch.__version__},
            "config": config.to_dict(),
            "model": loaded.identity,
            "dataset": {
                "path": data_source,
                "n": len(examples),
                "digest": examples_digest(examples),
                "tokens": sum(len(e.tokens) for e in examples),
                "bad_records": len(bad),
                "bad_record_sample": [str(b) for b in bad[:20]],
            },
            "layers": [s.to_dict() for s in self.specs],
            "curvature_ranks": self.curvature_ranks,
            "loss": LOSS_DEFINITION,
            "layout": "one packed (N, F) row-major dataset; "
            "per layer [L (c,d1) | R (c,d2)] or [G (d1,d2)]",
        }
        if dist is not None:
            self.metadata["shard"] = {
                "rank": dist.rank,
                "world": dist.world,
                "row_start": start,
                "row_stop": stop,
                "n_total": len(examples),
            }

    # ---- start or resume -----------------------------------------------------------------
    def check_space(self) -> None:
        check_space(
            self.partial,
            required_bytes(self.examples, self.specs, self.curvature_ranks, self.config),
        )

    def open(self) -> tuple[RawWriter, Journal]:
        self.check_space()
        journal = Journal(self.journal_path)
        if journal.created and self.partial.exists():
            with IndexReader(self.partial) as saved:  # checksums are not written yet: no verify
                diffs = differing_fields(
                    identity_view(saved.metadata), identity_view(self.metadata)
                )
            if diffs:
                raise BuildError(
                    f"{self.partial} was started with a different setup; differing fields: "
                    + "; ".join(diffs)
                    + ". Delete the .partial files or use the original settings."
                )
            return RawWriter(self.partial), journal
        for stale in (self.partial, self.journal_path):
            stale.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        columns: dict[str, Sequence[Any]] = {
            "id": [e.id for e in self.examples],
            "text": [e.text for e in self.examples],
            "tokens": [len(e.tokens) for e in self.examples],
            "metadata": [e.metadata for e in self.examples],
        }
        create_index_file(
            self.partial,
            self.metadata,
            self.specs,
            self.projections,
            self.curvature_ranks,
            columns,
            self.config.dtype,
        )
        crash_point("after-create")
        journal = Journal(self.journal_path)
        journal.append(event="created")
        return RawWriter(self.partial), journal

    # ---- phase 1: factors ----------------------------------------------------------------
    def factors(self, writer: RawWriter, journal: Journal) -> None:
        capture = ProjectedGradients(self.model, {p.name: p for p in self.projections})
        n, size, start = len(self.examples), self.config.batch_size, journal.rows_done
        since_flush, flushes = 0, 0
        bar = tqdm(
            total=n,
            initial=start,
            unit="ex",
            desc="factors",
            disable=not self.progress,
            mininterval=1.0,
        )
        tokens_done = 0
        began = time.perf_counter()
        for first in range(start, n, size):
            chunk = self.examples[first : first + size]
            batch = collate([e.tokens for e in chunk], [e.loss_start for e in chunk]).to(
                self.device
            )
            grads, _ = capture(batch)
            writer.write_rows(first, self.layout.pack(grads))
            since_flush += len(chunk)
            tokens_done += sum(len(e.tokens) for e in chunk)
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{tokens_done / max(time.perf_counter() - began, 1e-9):,.0f}")
            if since_flush >= self.config.checkpoint_rows or first + size >= n:
                writer.flush()
                journal.append(event="rows", done=min(first + size, n))
                since_flush, flushes = 0, flushes + 1
                crash_point(f"rows:{flushes}")
        bar.close()

    # ---- phase 2: curvature --------------------------------------------------------------
    def curvature(self, writer: RawWriter, journal: Journal) -> None:
        run_curvature(self, writer, journal)

    def finalize(self, writer: RawWriter) -> None:
        crash_point("before-rename")
        writer.finalize(self.out)
        crash_point("after-rename")
        self.journal_path.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


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
        data: a data path (see ``indexer.data.read_records``) or prepared examples.
        out: the final ``.h5`` path; work happens in ``out.partial`` until it is complete.
        config: build settings (defaults if omitted).
        progress: show progress bars on stderr.
        dist: this process's rank in a distributed build (``indexer.distributed``): it
            writes its slice to a shard file and rank 0 writes ``out`` as a manifest.

    Raises:
        BuildError: resume with different settings, or ``out`` exists from another build.
    """
    config = config or IndexConfig()
    out = Path(out)
    times: dict[str, float] = {}
    began = time.perf_counter()
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, _device(config, dist), config.precision)
    )
    times["load"] = time.perf_counter() - began
    began = time.perf_counter()
    if isinstance(data, list):
        examples, source = data, "<in-memory examples>"
        bad: list[BadRecord] = []
    else:
        tokenizer = loaded.tokenizer
        examples, bad = make_examples(
            read_records(data), tokenizer, config.max_tokens, config.on_bad_record
        )
        source = str(Path(data).resolve())
    rows = (0, len(examples))
    if dist is not None:
        rows = shard_rows(len(examples), config.batch_size, dist.rank, dist.world)
    target = out if dist is None else shard_path(out, dist.rank, dist.world)
    build = _Build(loaded, examples, bad, source, target, config, progress, dist, rows)
    times["prepare"] = time.perf_counter() - began
    if out.exists():
        return existing_summary(out, build, times)
    resumed_from = 0
    if not target.exists():  # a rank of a distributed rerun may have finished its shard
        try:
            resumed_from = _run_phases(build, times)
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise BuildError(
                f"out of disk space while writing {target}: {exc}. The partial build is kept: "
                "free space and rerun the same command to resume."
            ) from exc
    if dist is not None:
        dist.barrier()  # every shard is complete
        if dist.rank == 0:
            write_manifest(out, [shard_path(out, r, dist.world) for r in range(dist.world)])
        dist.barrier()
    summary = summarize(out, build, times)
    summary.bad_records = [str(b) for b in bad]
    summary.resumed_from_row = resumed_from
    return summary


def _run_phases(build: _Build, times: dict[str, float]) -> int:
    """Factors, curvature, finalize; returns the row the factor phase resumed from."""
    began = time.perf_counter()
    writer, journal = build.open()
    resumed_from = journal.rows_done
    try:
        build.factors(writer, journal)
        times["factors"] = time.perf_counter() - began
        began = time.perf_counter()
        build.curvature(writer, journal)
        times["curvature"] = time.perf_counter() - began
        began = time.perf_counter()
        build.finalize(writer)
        times["finalize"] = time.perf_counter() - began
    finally:
        writer.close()
    return resumed_from


def _device(config: IndexConfig, dist: Dist | None) -> str:
    return str(dist.device) if dist is not None and dist.device.type == "cuda" else config.device
