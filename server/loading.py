"""Start-up: open the index, load the model it was built with, refuse any mismatch."""

from __future__ import annotations

import logging
from pathlib import Path

from lorif_serve.errors import StartupError
from lorif_serve.indexer.inputs.lm import identify, load_model, resolve_device
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.featurizer import ModelFeaturizer
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.service import AttributionService, QueryOptions
from lorif_serve.server.settings import ServerSettings

log = logging.getLogger("server")


def _model_path(settings: ServerSettings, reader: IndexReader) -> Path:
    if settings.model is not None:
        return settings.model
    recorded = Path(reader.metadata["model"]["path"])
    if not recorded.exists():
        raise StartupError(f"no --model given and the index's model {recorded} does not exist")
    return recorded


def check_model(reader: IndexReader, identity: dict[str, str]) -> None:
    """Refuse a model whose config, weights or tokenizer differ from the index's."""
    saved = reader.metadata["model"]
    differing = [
        f"{key} (index {saved[key][:12]}…, model {identity[key][:12]}…)"
        for key in ("config_hash", "weights_hash", "tokenizer_hash")
        if saved.get(key) != identity.get(key)
    ]
    if differing:
        raise StartupError(
            f"the model does not match the one the index was built with; differing: "
            f"{', '.join(differing)}"
        )


def check_projections(reader: IndexReader) -> None:
    problems = reader.verify_projections()
    if problems:
        raise StartupError("; ".join(problems))


def load_service(settings: ServerSettings, metrics: ServerMetrics) -> AttributionService:
    reader = IndexReader(settings.index)
    try:
        if settings.verify_on_start:
            problems = reader.verify()
            if problems:
                raise StartupError(f"{settings.index} failed verification: {'; '.join(problems)}")
        else:
            check_projections(reader)
        path = _model_path(settings, reader)
        precision = reader.metadata["config"]["precision"]
        loaded = load_model(path, settings.device, precision)
        # served as it is: no weight gradients, no dropout (the featurizer then has
        # nothing to switch per pass)
        loaded.model.requires_grad_(False).eval()
        check_model(reader, identify(loaded.model, loaded.tokenizer, str(path)))
        device = resolve_device(settings.device)
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        featurizer = ModelFeaturizer(
            loaded.model, loaded.tokenizer, projections, device, settings.max_batch_tokens
        )
        engine = ScanEngine(
            reader,
            device,
            settings.residency,
            settings.block_rows,
            settings.gpu_memory_fraction,
            settings.ram_fraction,
            settings.scan_kernel,
        )
    except BaseException:
        reader.close()
        raise
    log.info(
        "serving %s: %d examples, residency %s, scan kernel %s (%s)",
        settings.index,
        reader.n_examples,
        engine.residency,
        engine.kernel,
        engine.kernel_reason,
    )
    options = QueryOptions(
        settings.query_mode,
        settings.query_energy,
        settings.query_rank,
        settings.truncate_query_to_factor_rank,
    )
    return AttributionService(
        reader,
        featurizer,
        engine,
        metrics,
        settings.max_query_tokens,
        options,
        settings.expose_paths,
    )
