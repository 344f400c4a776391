"""GET /v1/index: what an index holds and how it was built (paths only when exposed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lorif_serve.client.protocol import FilterField, IndexInfo, LayerInfo
from lorif_serve.indexer.core.kronecker import AnyCurvature
from lorif_serve.indexer.store.reader import IndexReader


def describe_index(
    reader: IndexReader,
    curvatures: Mapping[str, AnyCurvature],
    residency: str,
    filter_fields: list[FilterField],
    expose_paths: bool,
) -> IndexInfo:
    meta = reader.metadata
    config = meta["config"]
    model = {k: v for k, v in meta["model"].items() if expose_paths or k != "path"}
    dataset = {k: v for k, v in meta["dataset"].items() if expose_paths or k != "path"}
    if not expose_paths:
        if "name" in model:  # the name is the path as given at build time
            model["name"] = Path(str(model["name"])).name
        folder = str(Path(str(meta["dataset"].get("path", ""))).parent) + "/"
        dataset["bad_record_sample"] = [  # "<data file>:<line> (id): reason"
            str(line).replace(folder, "") for line in dataset.get("bad_record_sample", [])
        ]
    layers = [
        LayerInfo(
            name=spec.name,
            in_features=spec.in_features,
            out_features=spec.out_features,
            d1=spec.d1,
            d2=spec.d2,
            rank=spec.rank,
            dense=spec.dense,
            curvature_rank=curvatures[spec.name].rank,
            damping=curvatures[spec.name].damping,
        )
        for spec in reader.layers
    ]
    return IndexInfo(
        name=Path(reader.path).stem,
        n_examples=reader.n_examples,
        format_version=reader.format_version,
        created_at=meta["created_at"],
        residency=residency,
        bytes_per_example=reader.bytes_per_example,
        storage_dtype=reader.storage_dtype,
        method=_method(config),
        config=config,
        model=model,
        dataset=dataset,
        layers=layers,
        filter_fields=filter_fields,
        path=str(reader.path) if expose_paths else None,
    )


def _method(config: dict[str, object]) -> str:
    """``LoRIF c=1, ekfac, whitened factors`` / ``LoGRA-dense, factors`` (the curvature kind)."""
    storage = "LoGRA-dense" if config["dense"] else f"LoRIF c={config['factor_rank']}"
    curvature = str(config.get("curvature", "factors"))
    if curvature in ("factors", "gradients"):
        return f"{storage}, Woodbury curvature ({curvature}) r={config['curvature_rank']}"
    return f"{storage}, {curvature}, {config.get('factor_metric', 'raw')} factors"
