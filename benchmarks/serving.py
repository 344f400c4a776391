"""Query latency and throughput of the server on CPU.

1. Engine: single-query latency split (featurize / precondition / scan) on the demo index
   and on a synthetic index of 1 M rows with the same dims, for residency ram and disk,
   exact and low-rank (energy 0.9) queries; the scan against the time to read the same bytes
   from the same residency (warm page cache) and against FLOPs / measured GEMM rate.
2. HTTP: queries/s and latency at 1, 4, 16 and 64 concurrent clients against a real server
   process on the demo index.
3. With ``--smollm2-index`` (an index built with the SmolLM2-135M GGUF of
   ``benchmarks.indexing``): the same single-query split and HTTP at 1, 4 and 16 clients on it.

    python -m benchmarks.serving --index .cache/bbc/bbc.h5 --model .cache/bbc/model-300steps \
        --synthetic .cache/syn-1m.h5 [--smollm2-index .cache/smol-c1.h5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from examples.bbc.serve import demo_query, free_port, server_command, wait_ready
from lorif_serve.client import AsyncClient, Client, RetryPolicy
from lorif_serve.client.protocol import AttributionQuery
from lorif_serve.indexer.inputs.lm import load_model
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.batcher import WorkItem
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.featurizer import ModelFeaturizer
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.service import AttributionService, QueryOptions

from .common import median_seconds, write_result
from .indexing import smollm2_gguf

REPEATS = 5
SMOL_SECONDS = 30.0


def gemm_rate() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_seconds(lambda: a @ b, repeats=5)


def read_floor(engine: ScanEngine) -> float:
    """Seconds to bring the same bytes, in the same blocks, into the same host buffer."""
    stored = engine.reader.rows(0, 0).dtype
    buffer = torch.empty((engine.block_rows, engine.codec.width), dtype=stored)
    source = engine._resident  # ram residency: memory → buffer; disk: memory map → buffer

    def read() -> None:
        for start in range(0, engine.n, engine.block_rows):
            stop = min(start + engine.block_rows, engine.n)
            rows = source[start:stop] if source is not None else engine.reader.rows(start, stop)
            buffer[: stop - start].copy_(rows)

    return median_seconds(read, REPEATS)


def single_query(service: AttributionService, prompt: str, completion: str) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    query = AttributionQuery(prompt=prompt, completion=completion, top_k=10)
    runs = []
    for _ in range(REPEATS + 1):
        item = WorkItem(
            query, service.encode(query), loop.create_future(), loop, time.perf_counter() + 60
        )
        runs.append(service.process([item]).outcomes[0].timings)
    loop.close()
    runs = runs[1:]  # first run warms up
    return {
        key: statistics.median(getattr(t, key) for t in runs)
        for key in ("featurize_ms", "precondition_ms", "scan_ms", "scan_wait_ms")
    }


def engine_section(
    index: Path, model_dir: Path, query: tuple[str, str], rate: float, device: torch.device
) -> list[dict[str, Any]]:
    """Single-query split per residency and query mode on one device."""
    rows = []
    loaded = load_model(model_dir, str(device))
    residencies = ("gpu", "ram", "disk") if device.type == "cuda" else ("ram", "disk")
    with IndexReader(index) as reader:
        projections = {
            reader.projection(i).name: reader.projection(i) for i in range(len(reader.layers))
        }
        featurizer = ModelFeaturizer(loaded.model, loaded.tokenizer, projections, device)
        flops = 2 * reader.n_examples * sum(s.rank * s.dim for s in reader.layers)
        for residency in residencies:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            engine = ScanEngine(reader, device, residency)
            floor = read_floor(engine) if device.type == "cpu" else float("nan")
            for mode, options in (
                ("exact", QueryOptions()),
                ("energy 0.9", QueryOptions("energy", 0.9)),
            ):
                service = AttributionService(
                    reader, featurizer, engine, ServerMetrics(), options=options
                )
                split = single_query(service, *query)
                rows.append(
                    {
                        "index": index.name,
                        "n": reader.n_examples,
                        "device": device.type,
                        "residency": residency,
                        "query": mode,
                        "bytes": engine.total_bytes,
                        **split,
                        "read_floor_ms": 1000 * floor,
                        "compute_floor_ms": 1000 * flops / rate,
                        "scan_over_read": split["scan_ms"] / (1000 * floor),
                        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda"
                        else None,
                    }
                )
            del engine
    return rows


async def http_load(
    url: str, clients: int, seconds: float, query: tuple[str, str]
) -> dict[str, Any]:
    latencies: list[float] = []
    server_ms: list[float] = []  # the server's own total (request in → response model out)
    engine_ms: list[float] = []  # featurize + precondition + scan
    stop_at = time.perf_counter() + seconds

    async def worker(client: AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            answer = await client.attribute(*query, top_k=10, return_text=False)
            latencies.append(time.perf_counter() - began)
            t = answer.timings
            server_ms.append(t.total_ms)
            engine_ms.append(t.featurize_ms + t.precondition_ms + t.scan_ms)

    async with AsyncClient(url, timeout=120) as client:
        await client.attribute(*query)  # warm-up
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "clients": clients,
        "queries": len(latencies),
        "qps": len(latencies) / elapsed,
        "client_p50_ms": 1000 * statistics.median(latencies),
        "server_total_p50_ms": statistics.median(server_ms),
        "engine_p50_ms": statistics.median(engine_ms),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def http_section(
    index: Path,
    model_dir: Path,
    query: tuple[str, str],
    *extra: str,
    levels: tuple[int, ...] = (1, 4, 16, 64),
    seconds: float = 8.0,
) -> list[dict[str, Any]]:
    port = free_port()
    command = server_command(index, model_dir, port, "cpu", "--residency", "ram", *extra)
    process = subprocess.Popen(command)
    try:
        url = f"http://127.0.0.1:{port}"
        with Client(url, retry=RetryPolicy(max_retries=0)) as client:
            wait_ready(client, process)
        return [asyncio.run(http_load(url, clients, seconds, query)) for clients in levels]
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--synthetic", type=Path, help="a large synthetic index with the same dims")
    parser.add_argument("--held-out", type=Path, default=Path(".cache/bbc/held_out.jsonl"))
    parser.add_argument(
        "--smollm2-index",
        type=Path,
        help="an index built with SmolLM2-135M (benchmarks.indexing's GGUF): its single-query "
        "split and HTTP at 1 / 4 / 16 clients, next to the demo's",
    )
    parser.add_argument(
        "--out",
        default="",
        help="result name suffix (e.g. -epyc: a machine kind beside the usual record)",
    )
    args = parser.parse_args()
    prompt, completion, _ = demo_query(args.held_out)
    rate = gemm_rate()
    # The GPU rows appear only where CUDA is available; on CPU machines the section is skipped.
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    engine_rows = []
    for device in devices:
        for index in [args.index] + ([args.synthetic] if args.synthetic else []):
            engine_rows += engine_section(index, args.model, (prompt, completion), rate, device)
    http_rows = http_section(args.index, args.model, (prompt, completion))
    smol_http: list[dict[str, Any]] = []
    if args.smollm2_index is not None:
        smol = smollm2_gguf()
        engine_rows += engine_section(
            args.smollm2_index, smol, (prompt, completion), rate, torch.device("cpu")
        )
        # a batch of 16 SmolLM2 queries takes seconds: longer levels for enough of them
        smol_http = http_section(
            args.smollm2_index, smol, (prompt, completion), levels=(1, 4, 16), seconds=SMOL_SECONDS
        )
    table = f"Measured GEMM rate (fp32, 2048³): {rate / 1e9:.0f} GFLOP/s.\n\n"
    table += (
        "| index | N | device | residency | query | featurize ms | precondition ms | scan ms | "
        "read floor ms | compute floor ms | scan / read |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in engine_rows:
        table += (
            f"| {r['index']} | {r['n']:,} | {r['device']} | {r['residency']} | {r['query']} | "
            f"{r['featurize_ms']:.1f} | {r['precondition_ms']:.1f} | {r['scan_ms']:.1f} | "
            f"{r['read_floor_ms']:.1f} | {r['compute_floor_ms']:.1f} | {r['scan_over_read']:.2f} |\n"
        )
    table += "\nHTTP, demo index, residency ram, exact queries, 8 s per level:\n\n"
    table += http_table(http_rows)
    if smol_http:
        table += (
            f"\nHTTP, SmolLM2-135M index ({args.smollm2_index.name}), residency ram, exact "
            f"queries, {SMOL_SECONDS:.0f} s per level:\n\n" + http_table(smol_http)
        )
    one = http_rows[0]
    table += (
        f"\nHTTP/JSON overhead at 1 client (medians): client-observed {one['client_p50_ms']:.1f} ms, "
        f"server total {one['server_total_p50_ms']:.1f} ms, engine (featurize + precondition + scan) "
        f"{one['engine_p50_ms']:.1f} ms: {one['client_p50_ms'] - one['engine_p50_ms']:.1f} ms outside "
        f"the engine, of which {one['server_total_p50_ms'] - one['engine_p50_ms']:.1f} ms inside the "
        "server (validation, tokenization, the batching window, response models).\n"
    )
    result = {"gemm_flops": rate, "engine": engine_rows, "http": http_rows}
    if smol_http:
        result["http_smollm2"] = smol_http
    write_result(f"serving{args.out}", result, table)


def http_table(rows: list[dict[str, Any]]) -> str:
    table = "| concurrent clients | queries | queries/s | p50 ms | p99 ms | engine p50 ms |\n"
    table += "|---|---|---|---|---|---|\n"
    for r in rows:
        table += (
            f"| {r['clients']} | {r['queries']} | {r['qps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['engine_p50_ms']:.1f} |\n"
        )
    return table


if __name__ == "__main__":
    main()
