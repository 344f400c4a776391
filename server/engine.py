"""The scan engine: factor residency, a pipelined block reader and a running top-k (docs/server.md).

A reader stage fills preallocated host buffers with the next row block (a thread copying
from the memory map for ``disk`` residency) while the compute stage scores the current one;
on a GPU the host-to-device copy runs on its own stream. Running best and worst k are
merged per block on the compute device, and only the final (B, k) leave it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from lorif_serve.indexer.core.query import ScanQuery, score_block
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.fused_scan import FusedScanner, RawBlock
from lorif_serve.server.mapped_blocks import mapped_blocks
from lorif_serve.server.residency import choose_residency, default_block_rows
from lorif_serve.server.scanner_choice import choose_scanner
from lorif_serve.server.topk import RowMerger

# The kernel reads resident rows in place: long blocks, few merges (each block's start waits
# for its first rows, and its merges are torch calls). A block's (B, rows) scores and bounds
# stay this many floats, so that the merges' own passes over them stay in cache (1 M rows,
# B = 1: 65,536-row blocks 492-595 ms, one block 439-475 ms; B = 16 no faster with longer).
_FUSED_BLOCK_SCORES = 1 << 20

# (host rows, start, stop, seconds the compute stage waited, release the host buffer or None)
_HostBlock = tuple[torch.Tensor, int, int, float, "Callable[[], None] | None"]
# (numbers on the device, per-layer score scales of int8 rows or None, start, seconds waited)
_DeviceBlock = tuple[torch.Tensor, torch.Tensor | None, int, float]
_BUFFERS = 3


@dataclass
class ScanResult:
    top_scores: torch.Tensor  # (B, k) descending
    top_rows: torch.Tensor  # (B, k)
    bottom_scores: torch.Tensor | None  # (B, k') ascending
    bottom_rows: torch.Tensor | None
    seconds: float
    wait_seconds: float  # compute stage blocked on data
    bytes: int
    blocks: int
    rescored: int = 0  # rows scored exactly after a bounded pass; every row otherwise


class ScanEngine:
    """Scores every stored example for a batch of preconditioned queries.

    Args:
        reader: the open index.
        device: where scoring runs.
        residency: ``auto | gpu | ram | disk``.
        block_rows: rows per pipelined block.
        gpu_fraction: share of free GPU memory ``auto`` may use for the factors.
        ram_fraction: share of available RAM ``auto`` may use for the factors.
        kernel: ``auto | bounded | fused | torch`` (CPU, int8 rows; docs/server.md).
            ``auto`` takes ``bounded`` where the compiled kernel has it, else ``fused``,
            else ``torch``; ``kernel_reason`` says why.
    """

    def __init__(
        self,
        reader: IndexReader,
        device: torch.device,
        residency: str = "auto",
        block_rows: int | None = None,
        gpu_fraction: float = 0.8,
        ram_fraction: float = 0.5,
        kernel: str = "auto",
    ) -> None:
        self.reader, self.device = reader, device
        self.layout = reader.layout
        self.codec = reader.codec
        self.n = reader.n_examples
        self.row_bytes = reader.bytes_per_example
        self.residency = choose_residency(
            residency, self.n * self.row_bytes, device, gpu_fraction, ram_fraction
        )
        if block_rows is None:
            block_rows = default_block_rows(device, self.residency)
        self.block_rows = max(1, min(block_rows, max(self.n, 1)))
        self.compute_dtype = torch.float32
        self._lock = threading.Lock()  # one scan at a time owns the buffers
        self._resident: torch.Tensor | None = None
        pin = device.type == "cuda"
        if self.residency == "gpu":
            self._resident = reader.rows(0, self.n).to(device)
        elif self.residency == "ram":
            self._resident = reader.rows(0, self.n).clone()
            if pin:
                self._resident = self._resident.pin_memory()
        storage_dtype = reader.rows(0, 0).dtype
        stored = (self.block_rows, self.codec.width)
        self._host = [
            torch.empty(stored, dtype=storage_dtype, pin_memory=pin) for _ in range(_BUFFERS)
        ]
        shape = (self.block_rows, self.layout.width)
        self._work = [torch.empty(shape, dtype=self.compute_dtype, device=device) for _ in range(2)]
        # Quantized rows cross to the GPU as int8 and are decoded there (half the PCIe bytes).
        self._staging = (
            [torch.empty(stored, dtype=storage_dtype, device=device) for _ in range(2)]
            if pin and self.codec.quantized
            else None
        )
        resident = self._resident if self.residency == "ram" else None
        self._fused, self.kernel, self.kernel_reason = choose_scanner(
            kernel, device, reader, resident
        )

    @property
    def total_bytes(self) -> int:
        return self.n * self.row_bytes

    # ---- reader stage --------------------------------------------------------------------
    def _blocks(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.block_rows, self.n)) for s in range(0, self.n, self.block_rows)]

    def _read_ahead(self, stop_event: threading.Event) -> Generator[tuple[int, int, int]]:
        """Disk residency: a thread copies blocks into free host buffers.

        Yields (buffer index, start, stop); the consumer returns buffers via ``self._free``.
        """
        free: queue.Queue[int] = queue.Queue()
        ready: queue.Queue[tuple[int, int, int] | BaseException | None] = queue.Queue(
            maxsize=_BUFFERS
        )
        for index in range(_BUFFERS):
            free.put(index)

        def reader_loop() -> None:
            try:
                for start, stop in self._blocks():
                    index = free.get()
                    if stop_event.is_set():
                        return
                    self._host[index][: stop - start].copy_(self.reader.rows(start, stop))
                    ready.put((index, start, stop))
                ready.put(None)
            except BaseException as exc:  # surface reader errors in the compute stage
                ready.put(exc)

        thread = threading.Thread(target=reader_loop, name="index-reader", daemon=True)
        thread.start()
        self._free = free
        try:
            while True:
                item = ready.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_event.set()
            for index in range(_BUFFERS):
                free.put(index)  # unblock the reader if it waits for a buffer
            thread.join()

    # ---- compute stage -------------------------------------------------------------------
    def scan(
        self,
        query: ScanQuery,
        top_k: int,
        bottom_k: int = 0,
        allowed: torch.Tensor | None = None,
    ) -> ScanResult:
        """One pass over all rows for every query in ``query`` (B queries).

        ``allowed`` (B, N) bool ranks only those rows per query (exact top-k among them);
        where a query allows fewer than k rows, the rest of its k are filler to cut off.
        """
        if self.n == 0:
            raise ValueError("the index has no rows")
        if allowed is not None and tuple(allowed.shape) != (query.batch, self.n):
            raise ValueError(f"allowed must be ({query.batch}, {self.n}), got {allowed.shape}")
        with self._lock:
            if self._fused is not None and query.factored is None:  # low-rank modes: torch
                return self._scan_fused(self._fused, query, top_k, bottom_k, allowed)
            if allowed is not None:
                allowed = allowed.to(self.device)
            return self._scan(self._on_device(query), top_k, bottom_k, allowed)

    def _scan_fused(
        self,
        scanner: FusedScanner,
        query: ScanQuery,
        top_k: int,
        bottom_k: int,
        allowed: torch.Tensor | None,
    ) -> ScanResult:
        began = time.perf_counter()
        blocks = self._raw_blocks(_FUSED_BLOCK_SCORES // max(query.batch, 1))
        outcome = scanner.scan(query, blocks, top_k, bottom_k, allowed)
        bottom = outcome.bottom if outcome.bottom is not None else (None, None)
        return ScanResult(
            outcome.top[0],
            outcome.top[1],
            bottom[0],
            bottom[1],
            time.perf_counter() - began,
            outcome.wait_seconds,
            self.total_bytes,
            outcome.blocks,
            outcome.rescored,
        )

    def _raw_blocks(self, resident_rows: int) -> Iterator[RawBlock]:
        """Stored int8 rows as they are: slices of the resident copy (at least
        ``resident_rows`` at a time, whole tiles), or views of the memory map."""
        if self.residency == "ram" and self._resident is not None:
            step = -(-max(self.block_rows, resident_rows) // 16) * 16  # tiles start on a tile
            for start in range(0, self.n, step):
                yield self._resident[start : start + step], start, 0.0, None
            return
        yield from mapped_blocks(self.reader, self._blocks())

    def _on_device(self, query: ScanQuery) -> ScanQuery:
        return query.to(self.device, self.compute_dtype)

    def _scan(
        self, query: ScanQuery, top_k: int, bottom_k: int, allowed: torch.Tensor | None
    ) -> ScanResult:
        best = RowMerger(top_k, largest=True, allowed=allowed)
        worst = RowMerger(bottom_k, largest=False, allowed=allowed) if bottom_k else None
        began = time.perf_counter()
        wait = 0.0
        blocks = 0
        cuda = self.device.type == "cuda"
        copy_stream = torch.cuda.Stream(self.device) if cuda else None
        for block, scales, start, waited in self._device_blocks(copy_stream):
            wait += waited
            scores = score_block(self.layout, block, query, scales)
            numbers = torch.arange(start, start + scores.shape[1], device=scores.device)
            best.add(scores, numbers)
            if worst is not None:
                worst.add(scores, numbers)
            blocks += 1
        if cuda:
            torch.cuda.synchronize(self.device)
        top_scores, top_rows = (t.cpu() for t in best.result())
        bottom = tuple(t.cpu() for t in worst.result()) if worst is not None else (None, None)
        return ScanResult(
            top_scores,
            top_rows,
            bottom[0],
            bottom[1],
            time.perf_counter() - began,
            wait,
            self.total_bytes,
            blocks,
            self.n,
        )

    def _device_blocks(self, copy_stream: torch.cuda.Stream | None) -> Iterator[_DeviceBlock]:
        """Yields (stored numbers in compute dtype on the device, their per-layer score
        scales or None, start row, seconds waited)."""
        if self.residency == "gpu" and self._resident is not None:
            for start, stop in self._blocks():
                work = self._work[0][: stop - start]
                scales = self.codec.codes_into(self._resident[start:stop], work)
                yield work, scales, start, 0.0
            return
        if self.residency == "ram" and self._resident is not None:
            resident, tiles = self._resident, self._fused.tiles if self._fused else None
            yield from self._to_device(
                (
                    (resident[a:b] if tiles is None else tiles.block(a, b), a, b, 0.0, None)
                    for a, b in self._blocks()
                ),
                copy_stream,
            )
            return
        yield from self._to_device(self._from_disk(), copy_stream)

    def _from_disk(self) -> Iterator[_HostBlock]:
        stop_event = threading.Event()
        reads = self._read_ahead(stop_event)
        try:
            while True:
                began = time.perf_counter()
                try:
                    index, start, stop = next(reads)
                except StopIteration:
                    return
                waited = time.perf_counter() - began
                yield (
                    self._host[index][: stop - start],
                    start,
                    stop,
                    waited,
                    partial(self._free.put, index),
                )
        finally:
            reads.close()

    def _to_device(
        self,
        sources: Iterator[_HostBlock],
        copy_stream: torch.cuda.Stream | None,
    ) -> Iterator[_DeviceBlock]:
        """Move host blocks into the two device work buffers, alternating between them."""
        used: list[torch.cuda.Event | None] = [None, None]
        for slot_counter, (host, start, stop, waited, release) in enumerate(sources):
            slot = slot_counter % 2
            work = self._work[slot][: stop - start]
            if copy_stream is not None:
                # Copy (and bf16→fp32 cast) on a side stream so it overlaps the scoring of
                # the previous block; it must only wait for the last use of this slot.
                previous_use = used[slot]
                if previous_use is not None:
                    copy_stream.wait_event(previous_use)
                with torch.cuda.stream(copy_stream):
                    scales = None
                    if self._staging is not None:
                        staged = self._staging[slot][: stop - start]
                        staged.copy_(host, non_blocking=True)
                        scales = self.codec.codes_into(staged, work)
                        # made on the copy stream, read on the compute stream
                        scales.record_stream(torch.cuda.current_stream(self.device))  # type: ignore[union-attr]
                    else:
                        work.copy_(host, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(copy_stream)
                torch.cuda.current_stream(self.device).wait_event(copied)
                if release is not None:
                    copied.synchronize()  # the host buffer may be refilled only after its copy
            else:
                scales = self.codec.codes_into(host, work)  # bf16 / int8 → fp32, reused buffer
            if release is not None:
                release()
            yield work, scales, start, waited
            if copy_stream is not None:
                # The consumer has now enqueued its scoring of this slot.
                used[slot] = torch.cuda.Event()
                used[slot].record(torch.cuda.current_stream(self.device))  # type: ignore[union-attr]
