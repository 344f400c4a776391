"""A build's plan: everything decided before the first byte is written.

The plan fixes the rows this process indexes, the tracked layers and their dimensions,
the projections, the curvature ranks, the file names and the metadata saved in the index.
The phases (``indexer.build.phases``, ``indexer.build.curvature_phase``) only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from lorif_serve import __version__
from lorif_serve.errors import ConfigError
from lorif_serve.indexer.build.config import IndexConfig
from lorif_serve.indexer.build.distributed import Dist
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.indexer.core.kronecker import KRONECKER_KINDS
from lorif_serve.indexer.core.projection import LayerProjection, make_projection, projected_dims
from lorif_serve.indexer.inputs.examples import Example, examples_digest
from lorif_serve.indexer.inputs.layers import find_layers
from lorif_serve.indexer.inputs.lm import LoadedModel
from lorif_serve.indexer.inputs.records import BadRecord
from lorif_serve.indexer.store import schema

LOSS_DEFINITION = (
    "token-summed causal cross-entropy; text examples: every token after the first; "
    "prompt/completion examples: completion tokens only"
)
LAYOUT_DESCRIPTION = (
    "one packed (N, F) row-major dataset; per layer [L (c,d1) | R (c,d2)] or [G (d1,d2)]"
)


def layer_specs(model: torch.nn.Module, config: IndexConfig) -> list[LayerSpec]:
    """The tracked layers with their projected dimensions and factor rank."""
    specs = []
    layers = find_layers(model, config.layers or None)
    factor = config.projection_factor
    if config.d1 is None and factor is not None:
        narrowest = min(min(layer.in_features, layer.out_features) for layer in layers)
        if factor > narrowest:
            raise ConfigError(
                f"projection_factor {factor} is larger than the narrowest tracked layer "
                f"({narrowest} wide): its projection would be 0 wide; use at most {narrowest}"
            )
    for layer in layers:
        d1, d2 = projected_dims(
            layer.in_features, layer.out_features, config.projection_factor, config.d1, config.d2
        )
        rank = min(config.factor_rank, d1, d2)
        specs.append(
            LayerSpec(layer.name, layer.in_features, layer.out_features, d1, d2, rank, config.dense)
        )
    return specs


def _curvature_rank(config: IndexConfig, spec: LayerSpec) -> int:
    """Eigenvalues kept per layer: r (Woodbury), or all D (Kronecker: a complete basis)."""
    return spec.dim if config.curvature in KRONECKER_KINDS else min(config.curvature_rank, spec.dim)


def identity_view(metadata: dict[str, Any]) -> dict[str, Any]:
    """The fields a resume must match, flattened for readable differences."""
    view = {f"config.{k}": v for k, v in metadata["config"].items()}
    view |= {
        f"model.{k}": metadata["model"][k]
        for k in ("config_hash", "weights_hash", "tokenizer_hash")
    }
    view |= {"dataset.digest": metadata["dataset"]["digest"], "dataset.n": metadata["dataset"]["n"]}
    return view


@dataclass
class BuildPlan:
    """What one process builds. ``examples`` are its rows only (all rows unless sharded)."""

    model: torch.nn.Module
    config: IndexConfig
    out: Path  # the file this process completes: the index, or its shard
    examples: list[Example]
    specs: list[LayerSpec]
    projections: list[LayerProjection]
    curvature_ranks: list[int]
    metadata: dict[str, Any]
    progress: bool = True
    dist: Dist | None = None
    first_row: int = 0  # global row of examples[0] (a shard's start)
    n_total: int = 0  # rows of the whole index (all shards)

    @property
    def kronecker(self) -> bool:
        """Whether the curvature is Kronecker-factored (kfac / ekfac)."""
        return self.config.curvature in KRONECKER_KINDS

    @property
    def layout(self) -> RowLayout:
        return RowLayout(self.specs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def partial(self) -> Path:
        return schema.partial_path(self.out)

    @property
    def journal_path(self) -> Path:
        return schema.partial_path(self.out, ".journal")

    @property
    def state_dir(self) -> Path:
        return schema.partial_path(self.out, ".state")


def plan_build(
    loaded: LoadedModel,
    examples: list[Example],
    bad: list[BadRecord],
    data_source: str,
    out: Path,
    config: IndexConfig,
    progress: bool = True,
    dist: Dist | None = None,
    rows: tuple[int, int] | None = None,
) -> BuildPlan:
    """Plan the build of ``examples[rows]`` (default: all) into ``out``."""
    start, stop = rows if rows is not None else (0, len(examples))
    specs = layer_specs(loaded.model, config)
    metadata: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": {"name": "lorif-serve", "version": __version__, "torch": torch.__version__},
        "config": config.to_dict(),
        "model": loaded.identity,
        "dataset": _dataset_metadata(examples, bad, data_source),
        "layers": [s.to_dict() for s in specs],
        "curvature_ranks": [_curvature_rank(config, s) for s in specs],
        "loss": LOSS_DEFINITION,
        "layout": LAYOUT_DESCRIPTION,
    }
    if dist is not None:
        metadata["shard"] = {
            "rank": dist.rank,
            "world": dist.world,
            "row_start": start,
            "row_stop": stop,
            "n_total": len(examples),
        }
    projections = [
        make_projection(s.name, s.in_features, s.out_features, s.d1, s.d2, config.seed)
        for s in specs
    ]
    return BuildPlan(
        model=loaded.model,
        config=config,
        out=out,
        examples=examples[start:stop],
        specs=specs,
        projections=projections,
        curvature_ranks=list(metadata["curvature_ranks"]),
        metadata=metadata,
        progress=progress,
        dist=dist,
        first_row=start,
        n_total=len(examples),
    )


def _dataset_metadata(
    examples: list[Example], bad: list[BadRecord], data_source: str
) -> dict[str, Any]:
    return {
        "path": data_source,
        "n": len(examples),
        "digest": examples_digest(examples),
        "tokens": sum(len(e.tokens) for e in examples),
        "bad_records": len(bad),
        "bad_record_sample": [str(b) for b in bad[:20]],
    }
