"""The build pipeline: examples → projected gradients → factors → curvature → index file."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import __version__, schema
from .config import IndexConfig, differing_fields
from .curvature import RandomizedEigenSolver
from .data import BadRecord, Example, examples_digest, make_examples, read_records
from .factors import LayerSpec, RowLayout
from .faults import crash_point
from .hooks import ProjectedGradients, collate
from .journal import Journal, atomic_write_arrays, read_arrays
from .layers import find_layers
from .models import LoadedModel, load_model
from .projection import make_projection, projected_dims
from .reader import IndexReader
from .writer import RawWriter, create_index_file

LOSS_DEFINITION = (
    "token-summed causal cross-entropy; text examples: every token after the first; "
    "prompt/completion examples: completion tokens only"
)
_CURVATURE_BLOCK_ROWS = 2048


class BuildError(RuntimeError):
    """The build cannot proceed (e.g. a resume with a different config or model)."""


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


def _identity_view(metadata: dict[str, Any]) -> dict[str, Any]:
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
    ) -> None:
        self.model, self.config, self.examples, self.out = loaded.model, config, examples, out
        self.progress = progress
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
        self.metadata = {
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

    # ---- start or resume -----------------------------------------------------------------
    def open(self) -> tuple[RawWriter, Journal]:
        journal = Journal(self.journal_path)
        if journal.created and self.partial.exists():
            with IndexReader(self.partial) as saved:  # checksums are not written yet: no verify
                diffs = differing_fields(
                    _identity_view(saved.metadata), _identity_view(self.metadata)
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
        if journal.last("curvature_written"):
            return
        dtype = torch.float64 if self.config.precision == "float64" else torch.float32
        solvers = [
            RandomizedEigenSolver(
                s.dim,
                rank,
                self.config.oversample,
                self.config.power_iters,
                seed=self.config.seed + i,
            )
            for i, (s, rank) in enumerate(zip(self.specs, self.curvature_ranks, strict=True))
        ]
        done = journal.curvature_passes_done
        if done:
            state = read_arrays(self.state_dir / f"pass-{done}.npz")
            for i, solver in enumerate(solvers):
                solver.load_state(
                    {
                        k.split("/", 1)[1]: torch.from_numpy(v)
                        for k, v in state.items()
                        if k.startswith(f"{i}/")
                    }
                )
        reader = IndexReader(self.partial)
        total = solvers[0].passes_total
        n = len(self.examples)
        try:
            for pass_index in range(done, total):
                desc = f"curvature pass {pass_index + 1}/{total}"
                for first in tqdm(
                    range(0, n, _CURVATURE_BLOCK_ROWS),
                    desc=desc,
                    unit="block",
                    disable=not self.progress,
                    mininterval=1.0,
                ):
                    block = reader.rows(first, min(first + _CURVATURE_BLOCK_ROWS, n))
                    block = block.to(self.device, dtype)
                    for spec, solver in zip(self.specs, solvers, strict=True):
                        solver.accumulate(self.layout.gradients(spec, block))
                for solver in solvers:
                    solver.finish_pass()
                if pass_index + 1 < total:  # the last pass's result is the curvature itself
                    self._save_state(solvers, pass_index + 1)
                    journal.append(event="curvature_pass", done=pass_index + 1)
                    crash_point(f"curvature-pass:{pass_index + 1}")
        finally:
            reader.close()
        for i, solver in enumerate(solvers):
            writer.write_curvature(i, solver.result(self.config.damping)[0])
        writer.flush()
        journal.append(event="curvature_written")
        crash_point("curvature-written")

    def _save_state(self, solvers: Sequence[RandomizedEigenSolver], passes: int) -> None:
        self.state_dir.mkdir(exist_ok=True)
        arrays = {
            f"{i}/{k}": v.numpy() for i, s in enumerate(solvers) for k, v in s.state().items()
        }
        atomic_write_arrays(self.state_dir / f"pass-{passes}.npz", arrays)
        previous = self.state_dir / f"pass-{passes - 1}.npz"
        previous.unlink(missing_ok=True)

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
) -> BuildSummary:
    """Build (or resume building) an index at ``out``.

    Args:
        model: a model directory, a ``.gguf`` file, or an already loaded model.
        data: a data path (see ``indexer.data.read_records``) or prepared examples.
        out: the final ``.h5`` path; work happens in ``out.partial`` until it is complete.
        config: build settings (defaults if omitted).
        progress: show progress bars on stderr.

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
        else load_model(model, config.device, config.precision)
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
    build = _Build(loaded, examples, bad, source, out, config, progress)
    times["prepare"] = time.perf_counter() - began
    if out.exists():
        return _existing(out, build, times)
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
    summary = _summary(out, build, times)
    summary.bad_records = [str(b) for b in bad]
    summary.resumed_from_row = resumed_from
    return summary


def _existing(out: Path, build: _Build, times: dict[str, float]) -> BuildSummary:
    with IndexReader(out) as done:
        diffs = differing_fields(_identity_view(done.metadata), _identity_view(build.metadata))
    if diffs:
        raise BuildError(f"{out} already exists from a different build: " + "; ".join(diffs))
    # A crash between the final rename and the cleanup leaves these behind.
    build.journal_path.unlink(missing_ok=True)
    shutil.rmtree(build.state_dir, ignore_errors=True)
    summary = _summary(out, build, times)
    summary.already_complete = True
    return summary


def _summary(out: Path, build: _Build, times: dict[str, float]) -> BuildSummary:
    itemsize = schema.STORAGE_DTYPES[build.config.dtype][0].itemsize
    return BuildSummary(
        path=out,
        n_examples=len(build.examples),
        n_layers=len(build.specs),
        n_tokens=sum(len(e.tokens) for e in build.examples),
        bytes_per_example=build.layout.width * itemsize,
        dense_bytes_per_example=sum(s.dim for s in build.specs) * itemsize,
        file_bytes=out.stat().st_size,
        phase_seconds=times,
    )
