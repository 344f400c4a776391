"""``auto`` scans an index below the bounded scan's break-even exactly, with the same answer."""

import math

import pytest
import torch

from lorif_serve.indexer.core.query import ScanQuery
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.break_even import break_even_rows, measure_break_even
from lorif_serve.server.engine import ScanEngine
from lorif_serve.server.kernels.build import load_kernel
from lorif_serve.server.tiled import TiledRows
from tests.test_scan_kernels import _scanner, int8_rows, queries

STATUS = load_kernel()
needs_bounded = pytest.mark.skipif(
    STATUS.kernel is None or not STATUS.kernel.has_bounded,
    reason="no bounded pass in this build (AVX-512 VNNI or AVX2)",
)


def test_break_even_is_the_preparation_over_the_saving_per_row():
    assert break_even_rows(0.05, 66e-6, 5e-6) == pytest.approx(0.05 / 61e-6)
    assert break_even_rows(0.002, 1.5e-6, 1.5e-6) == math.inf  # saves nothing per row
    assert break_even_rows(0.002, 1e-6, 2e-6) == math.inf
    assert break_even_rows(-0.001, 2e-6, 1e-6) == 0.0  # a preparation timed as free


@needs_bounded
def test_restored_tiles_are_the_stored_rows_again():
    layout, codec, raw = int8_rows(77, 4)
    kernel = STATUS.kernel
    tiles = TiledRows(kernel, kernel.prepare(layout, codec, queries(1, 8)).meta, raw.clone())
    assert not torch.equal(tiles.data, raw)
    tiles.restore()
    assert tiles.tiled == 0 and torch.equal(tiles.data, raw)
    assert torch.equal(tiles.block(0, 77), raw)


@needs_bounded
def test_the_measured_break_even_is_a_number_of_rows():
    layout, codec, raw = int8_rows(403, 2)
    scanner = _scanner(raw, layout, codec, True, True)
    query = ScanQuery(queries(1, 3))
    assert measure_break_even(scanner, query) == 0.0  # not tiled yet: keep the bounded scan
    scanner.warm(query)
    rows = measure_break_even(scanner, query)
    assert rows > 0 and not math.isnan(rows)
    streamed = measure_break_even(_scanner(raw, layout, codec, True, False), query)
    assert streamed > 0 and not math.isnan(streamed)


def _answers(engine, reader):
    hq = {s.name: torch.randn(2, s.d1, s.d2, dtype=torch.float32) for s in reader.layout.layers}
    return engine.scan(ScanQuery(hq), 7, 5)


@needs_bounded
@pytest.mark.parametrize("residency", ["ram", "disk"])
@pytest.mark.parametrize("break_even", [0.0, 1e9])
def test_auto_answers_as_the_bounded_scan_on_either_side(
    break_even, residency, int8_index_path, monkeypatch
):
    """Below the break-even: the fused kernel (over resident rows put back in stored order);
    above it: the bounded pass (over tiles where resident). Bit for bit the bounded kernel's
    answer either way."""
    monkeypatch.setattr("lorif_serve.server.break_even.measure_break_even", lambda *_: break_even)
    with IndexReader(int8_index_path) as reader:
        cpu = torch.device("cpu")
        torch.manual_seed(0)
        want = _answers(ScanEngine(reader, cpu, residency, kernel="bounded"), reader)
        engine = ScanEngine(reader, cpu, residency)
        torch.manual_seed(0)
        got = _answers(engine, reader)
        small = break_even > reader.n_examples
        assert engine.kernel == ("fused" if small else "bounded")
        assert ("below the bounded scan's break-even" in engine.kernel_reason) == small
        scanner = engine._fused
        assert (scanner.tiles is None) == (small or residency == "disk")
        if small:  # every row scored exactly, read in stored order
            assert got.rescored == reader.n_examples
            if residency == "ram":
                assert torch.equal(scanner.resident, reader.rows(0, reader.n_examples))
        else:
            assert got.rescored < reader.n_examples
        for field in ("top_scores", "top_rows", "bottom_scores", "bottom_rows"):
            assert torch.equal(getattr(got, field), getattr(want, field))
