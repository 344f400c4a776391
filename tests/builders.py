"""The shared test builders: small indexes, apps over a fake featurizer, live servers.

Every server-side test starts from these, so the build arguments are written once.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn

from lorif_serve.indexer import IndexConfig, IndexReader, build_index
from lorif_serve.indexer.cli import main as index_main
from lorif_serve.indexer.core.query import ScanQuery, precondition, query_gradients, score_block
from lorif_serve.indexer.inputs.examples import make_examples
from lorif_serve.indexer.inputs.records import Record
from lorif_serve.indexer.inputs.tokens import encode_prompt_completion
from lorif_serve.server.app import create_app
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.service import AttributionService
from lorif_serve.server.settings import ServerSettings
from tests.fakes import FakeFeaturizer
from tests.tiny import loaded, random_texts

API_DOCS = 70  # examples in the API test index


def build_args(model_dir: Path, data_file: Path, out: Path, *extra: str, **options) -> list[str]:
    """``lorif-index build`` arguments: f = 2 and no progress bars, plus ``options`` as flags
    (``factor_rank=2`` → ``--factor-rank 2``) and any ``extra`` arguments as given."""
    args = ["build", "--model", str(model_dir), "--data", str(data_file), "--out", str(out)]
    options = {"projection_factor": 2, **options}
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return [*args, "--quiet", *extra]


def build_small_index(model_dir: Path, data_file: Path, out: Path, *extra: str) -> Path:
    """The CLI build most server-side tests start from (tiny model, f = 2, ≤ 10 tokens)."""
    args = build_args(model_dir, data_file, out, *extra, max_tokens=10)
    if index_main(args) != 0:
        raise RuntimeError(f"test build failed: {args}")
    return out


def build_api_index(path: Path, dtype: str = "fp32") -> Path:
    """An index of API_DOCS random texts (topic metadata) for the HTTP tests."""
    model = loaded(dtype=torch.float32)
    records = [
        Record(f"doc{i}", "mem", text=t, metadata={"topic": f"t{i % 3}"})
        for i, t in enumerate(random_texts(API_DOCS, seed=4))
    ]
    examples = make_examples(iter(records), model.tokenizer, 10)[0]
    config = IndexConfig(
        projection_factor=2, factor_rank=2, curvature="factors", curvature_rank=6, dtype=dtype
    )
    build_index(model, examples, path, config, progress=False)
    return path


def make_app(index_path, residency="ram", block_rows=16, delay=0.0, **settings):
    """The real app over ``index_path`` with a FakeFeaturizer (no model forward pass)."""
    reader = IndexReader(index_path)
    fake = FakeFeaturizer(reader.layers, delay)
    engine = ScanEngine(reader, torch.device("cpu"), residency, block_rows)
    service = AttributionService(
        reader,
        fake,
        engine,
        ServerMetrics(),
        settings.pop("max_query_tokens", 2048),
        expose_paths=settings.get("expose_paths", False),
    )
    app = create_app(ServerSettings(index=index_path, **settings), service)
    return app, fake


def brute_force(index_path, fake, queries, layers=None):
    """Scores of every row, float64, the whole index in one block."""
    with IndexReader(index_path) as reader:
        grads = [fake.query_gradients(*fake.encode(p, c)) for p, c in queries]
        stacked = {s.name: torch.stack([g[s.name] for g in grads]).double() for s in reader.layers}
        curv = {
            s.name: reader.curvature(i).to("cpu", torch.float64)
            for i, s in enumerate(reader.layers)
        }
        hq = precondition(reader.layers, curv, stacked)
        if layers is not None:
            hq = {k: v for k, v in hq.items() if k in layers}
        values = reader.values(0, reader.n_examples, torch.float64)
        return score_block(reader.layout, values, ScanQuery(hq)), reader.example_ids()


class LiveServer:
    """uvicorn on a free loopback port in a thread, for tests that need real sockets."""

    def __init__(self, app):
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Featurized:
    grads: dict[str, torch.Tensor]  # layer → (B, d1, d2)
    losses: torch.Tensor  # (B,)


def featurize(capture, tokenizer, queries, device="cpu") -> Featurized:
    """Query gradients through the server's code path (tokenize, then the shared hooks)."""
    encoded = [encode_prompt_completion(tokenizer, p, c) for p, c in queries]
    return Featurized(*query_gradients(capture, encoded, torch.device(device)))
