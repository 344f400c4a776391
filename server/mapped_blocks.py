"""Streamed rows read in place from the index's memory map (``disk`` residency, CPU kernels).

The compiled kernels read stored int8 rows as they lie, so a streamed scan need not copy
each block into a buffer first: the block is a view of the memory map. What a copy did
besides (bringing pages that are not in the page cache yet in from the disk while the
previous block is scored) a thread does here by touching one byte of every page of the next
block, which costs a small fraction of copying it (a 6 KB demo row is one or two pages).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.fused_scan import RawBlock

_PAGE = 4096


def touch_pages(reader: IndexReader, start: int, stop: int) -> int:
    """Read one byte of every page rows [start, stop) occupy; returns their sum (so the reads
    are not optimized away)."""
    flat = reader.rows(start, stop).numpy().reshape(-1)
    return int(np.add.reduce(flat[::_PAGE], dtype=np.int64)) + int(flat[-1:].sum())


def mapped_blocks(reader: IndexReader, blocks: list[tuple[int, int]]) -> Iterator[RawBlock]:
    """(rows, start, seconds waited for their pages, no release) per block, in order, the
    next block's pages touched while the current one is scored."""
    if not blocks:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="index-pages") as pool:
        ahead: Future[int] = pool.submit(touch_pages, reader, *blocks[0])
        for i, (start, stop) in enumerate(blocks):
            began = time.perf_counter()
            ahead.result()
            waited = time.perf_counter() - began
            if i + 1 < len(blocks):
                ahead = pool.submit(touch_pages, reader, *blocks[i + 1])
            yield reader.rows(start, stop), start, waited, None
