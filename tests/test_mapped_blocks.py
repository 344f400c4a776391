"""Streamed scans read int8 rows in place from the memory map, a block at a time."""

import pytest
import torch

from lorif_serve.indexer.core.query import ScanQuery
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.mapped_blocks import mapped_blocks, touch_pages


def test_mapped_blocks_are_the_stored_rows_in_order(int8_index_path):
    with IndexReader(int8_index_path) as reader:
        n = reader.n_examples
        blocks = [(a, min(a + 7, n)) for a in range(0, n, 7)]
        seen = []
        for rows, start, waited, release in mapped_blocks(reader, blocks):
            assert release is None and waited >= 0
            assert torch.equal(rows, reader.rows(start, start + rows.shape[0]))
            seen.append((start, start + rows.shape[0]))
        assert seen == blocks
        assert list(mapped_blocks(reader, [])) == []
        raw = reader.rows(0, n).numpy().reshape(-1)
        assert touch_pages(reader, 0, n) == int(raw[::4096].astype("int64").sum()) + int(raw[-1])


def test_a_disk_scan_answers_as_the_resident_one(int8_index_path):
    with IndexReader(int8_index_path) as reader:
        cpu = torch.device("cpu")
        hq = {s.name: torch.randn(3, s.d1, s.d2, dtype=torch.float32) for s in reader.layout.layers}
        for kernel in ("fused", "auto"):
            disk = ScanEngine(reader, cpu, "disk", kernel=kernel, block_rows=5)
            ram = ScanEngine(reader, cpu, "ram", kernel=kernel)
            if disk.kernel == "torch":
                continue  # no compiled kernel here: the torch path copies blocks as before
            got, want = disk.scan(ScanQuery(hq), 4, 3), ram.scan(ScanQuery(hq), 4, 3)
            assert torch.equal(got.top_rows, want.top_rows)
            assert torch.equal(got.top_scores, want.top_scores)
            assert torch.equal(got.bottom_rows, want.bottom_rows)


def test_a_streamed_index_has_its_row_norms_from_start_up(int8_index_path):
    with IndexReader(int8_index_path) as reader:
        engine = ScanEngine(reader, torch.device("cpu"), "disk", kernel="auto", block_rows=5)
        if engine._fused is None or not engine._fused.bounded:
            pytest.skip("no bounded kernel here: no norms to keep")
        layers = tuple(s.name for s in reader.layout.layers)
        cache, filled = engine._fused.norms._streamed[layers]
        assert filled == reader.n_examples
        prepared = engine._fused.prepare(
            ScanQuery(
                {
                    s.name: torch.zeros(1, s.d1, s.d2, dtype=torch.float32)
                    for s in reader.layout.layers
                }
            )
        )
        want = engine._fused.kernel.row_norms(prepared, reader.rows(0, reader.n_examples))
        assert torch.equal(cache, want)
