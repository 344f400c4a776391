"""The compiled CPU scan kernels against the float64 reference and against each other.

fused: every row in float32 (≈ 1e-7 of the reference). bounded: its interval holds the fused
score of every row, and its top-k / bottom-k are bit for bit the fused scan's, ties included.
"""

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from lorif_serve.errors import ConfigError
from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.indexer.core.query import ScanQuery
from lorif_serve.indexer.core.scoring import score_reference
from lorif_serve.server.fused_scan import FusedScanner
from lorif_serve.server.kernels import quantize
from lorif_serve.server.kernels.build import load_kernel
from lorif_serve.server.kernels.prepared import prepare_query
from lorif_serve.server.kernels.quantize import _spectral_norms
from lorif_serve.server.tiled import TiledRows

STATUS = load_kernel()
needs_kernel = pytest.mark.skipif(STATUS.kernel is None, reason=STATUS.reason)
needs_bounded = pytest.mark.skipif(
    STATUS.kernel is None or not STATUS.kernel.has_bounded,
    reason="no bounded pass in this build (AVX-512 VNNI or AVX2)",
)

# Every code path: 16-wide and 8-wide vectors on either side, a scalar remainder (5, 7),
# c not a multiple of 4, c = 1 (AMX: up to 16 tiles a step, b not a multiple of 64 codes),
# widths the integer pass refuses (db % 4 ≠ 0), a dense layer.
SPECS = [
    LayerSpec("sq", 64, 64, 16, 16, 8),
    LayerSpec("wide", 64, 256, 16, 64, 5),
    LayerSpec("tall", 256, 64, 64, 16, 3),
    LayerSpec("eight", 64, 96, 8, 24, 2),
    LayerSpec("odd", 40, 56, 5, 7, 2),
    LayerSpec("one", 144, 80, 36, 20, 1),
    LayerSpec("dense", 64, 64, 4, 8, 1, dense=True),
]


def int8_rows(n, seed=0, duplicate_every=0, specs=SPECS):
    layout = RowLayout(specs)
    codec = RowCodec(layout, torch.int8)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(n, layout.width, generator=generator, dtype=torch.float64)
    values *= torch.logspace(-3, 3, n, dtype=torch.float64)[torch.randperm(n, generator=generator)][
        :, None
    ]
    if duplicate_every:
        values[duplicate_every::duplicate_every] = values[0]  # many rows with equal scores
    return layout, codec, codec.encode(values)


def queries(batch, seed=1, specs=SPECS):
    generator = torch.Generator().manual_seed(seed)
    return {
        s.name: torch.randn(batch, s.d1, s.d2, generator=generator, dtype=torch.float32)
        for s in specs
    }


@needs_kernel
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_kernel_matches_the_float64_reference(batch):
    layout, codec, raw = int8_rows(50)
    hq = queries(batch)
    kernel = STATUS.kernel
    out = torch.empty(batch, 64, dtype=torch.float32)
    got = kernel.score(kernel.prepare(layout, codec, hq), raw, out)
    want = score_reference(layout, codec.decode(raw, torch.float64), hq)
    scale = want.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(got.double() / scale, want / scale, atol=1e-5, rtol=0)


@needs_kernel
def test_fused_kernel_scores_a_row_the_same_wherever_it_sits():
    layout, codec, raw = int8_rows(40)
    kernel, hq = STATUS.kernel, queries(2)
    prepared = kernel.prepare(layout, codec, hq)
    whole = kernel.score(prepared, raw, torch.empty(2, 40, dtype=torch.float32)).clone()
    picked = torch.tensor([39, 3, 17, 17])
    alone = kernel.score(prepared, raw[picked], torch.empty(2, 4, dtype=torch.float32))
    assert torch.equal(alone, whole[:, picked])


def _vector_kernel():
    """The loaded kernel with its tiled pass on vector registers, not AMX."""
    kernel = copy.copy(STATUS.kernel)
    kernel.use_amx = False
    return kernel


def _tiled_kernel(name):
    """``name``: "vector" or "amx" (skips where the machine or OS has no AMX)."""
    if name == "vector":
        return _vector_kernel()
    if not STATUS.kernel.use_amx:
        pytest.skip("no AMX here (or LORIF_AMX=0)")
    return STATUS.kernel


@needs_bounded
@pytest.mark.parametrize("products", ["vector", "amx"])
@pytest.mark.parametrize("tiled,levels", [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_bounded_interval_holds_every_fused_score(seed, tiled, levels, products):
    """Row by row, and over row tiles (18 tiles and a 12-row tail in stored order) with one
    or two query levels, the tiles' products on vector registers or AMX tiles."""
    layout, codec, raw = int8_rows(300, seed)
    kernel, hq = _tiled_kernel(products), queries(4, seed + 10)
    prepared = kernel.prepare(layout, codec, hq)
    exact = kernel.score(prepared, raw, torch.empty(4, 300, dtype=torch.float32))
    approx = torch.empty(4, 300, dtype=torch.float32)
    margin = torch.empty_like(approx)
    norms = kernel.row_norms(prepared, raw)
    if tiled:
        tiles = TiledRows(kernel, prepared.meta, raw.clone())
        assert tiles.tiled == 288
        tiles.bounded(prepared, 0, 300, norms, approx, margin, levels)
    else:
        kernel.bounded(prepared, raw, norms, approx, margin)
    assert torch.all((exact - approx).abs() <= margin)
    if levels == 2:  # the second level tightens the tiles' bound by about 128×
        one = torch.empty_like(margin)
        kernel.bounded(prepared, raw, norms, torch.empty_like(approx), one)
        assert (margin[:, :288] / one[:, :288]).median() < 0.05
    reference = score_reference(layout, codec.decode(raw, torch.float64), hq)
    assert torch.all((reference - approx.double()).abs() <= margin.double())
    assert torch.all(margin > 0)  # the bound is not vacuous either:
    assert (margin / reference.std(dim=1, keepdim=True)).median() < 1


@needs_bounded
@pytest.mark.parametrize("products", ["vector", "amx"])
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_streamed_rows_take_the_tiled_pass_bit_for_bit(batch, levels, products):
    """Rows in stored order, tiled a step at a time into a buffer (``stream``): the same
    intervals as the pass over rows tiled beforehand, for every layer shape of SPECS."""
    layout, codec, raw = int8_rows(208, batch + levels)
    kernel = _tiled_kernel(products)
    prepared = kernel.prepare(layout, codec, queries(batch, 7))
    norms = kernel.row_norms(prepared, raw)
    tiles = TiledRows(kernel, prepared.meta, raw.clone())
    want = [torch.empty(batch, 208, dtype=torch.float32) for _ in range(2)]
    tiles.bounded(prepared, 0, 208, norms, *want, levels)
    got = [torch.full((batch, 208), float("nan"), dtype=torch.float32) for _ in range(2)]
    before = raw.clone()
    kernel.bounded(prepared, raw, norms, *got, levels=levels, stream=True)
    assert torch.equal(raw, before)  # the stored rows are left as they are
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_the_tile_transform_lays_bytes_as_documented():
    """Byte o of row r at 16·o + r, except 4-byte elements (element e at 16·e + 4·r, b
    codes with their sign bits flipped), against a plain Python walk of the layout."""
    if STATUS.kernel is None or not STATUS.kernel.has_bounded:
        pytest.skip("no bounded pass in this build (AVX-512 VNNI or AVX2)")
    layout, codec, raw = int8_rows(48, 3)
    kernel = STATUS.kernel
    meta = kernel.prepare(layout, codec, queries(1, 8)).meta
    tiled = raw.clone()
    kernel.tile_rows(meta, tiled)
    width = raw.shape[1]
    four = {}  # offset of a 4-byte element → whether its bytes are flipped
    for m in meta.tolist():
        if m[1] >= 0 and m[4] % 4 == 0:
            four.update(dict.fromkeys(range(m[1], m[1] + m[2] * m[4], 4), True))
        four.update({m[side]: False for side in (5, 6) if m[side] >= 0})
    want = torch.empty_like(raw)
    for t in range(3):
        src, dst = raw[16 * t : 16 * t + 16].view(torch.uint8), want[16 * t : 16 * t + 16]
        out = dst.view(-1).view(torch.uint8)
        o = 0
        while o < width:
            if o in four:
                for r in range(16):
                    word = src[r, o : o + 4] ^ (0x80 if four[o] else 0)
                    out[16 * o + 4 * r : 16 * o + 4 * r + 4] = word
                o += 4
            else:
                out[16 * o : 16 * o + 16] = src[:, o]
                o += 1
    assert torch.equal(tiled, want)


def _tiled_intervals(prepared, layout, codec, raw, hq, levels):
    """(approx, margin) of the tiled bounded pass over ``raw`` and the float64 reference."""
    approx = torch.empty(prepared.batch, raw.shape[0], dtype=torch.float32)
    margin = torch.empty_like(approx)
    norms = STATUS.kernel.row_norms(prepared, raw)
    TiledRows(STATUS.kernel, prepared.meta, raw.clone()).bounded(
        prepared, 0, raw.shape[0], norms, approx, margin, levels
    )
    return approx, margin, score_reference(layout, codec.decode(raw, torch.float64), hq)


@needs_bounded
@pytest.mark.parametrize("levels", [1, 2])
def test_tiled_interval_holds_where_products_are_summed_in_float(levels):
    """A b side longer than 256 codes: four products may pass 2³¹ in int32, so the tiled
    pass sums them in float32 (c = 4: one tile at a time; c = 5: four tiles at a time)."""
    specs = [LayerSpec("long4", 64, 1088, 16, 272, 4), LayerSpec("long5", 64, 1040, 16, 260, 5)]
    kernel = STATUS.kernel
    n = 64 * kernel.threads + 40  # every thread's share holds four whole tiles
    layout, codec, raw = int8_rows(n, 3, specs=specs)
    hq = queries(2, 4, specs=specs)
    prepared = kernel.prepare(layout, codec, hq)
    assert all(int(m[4]) > 256 for m in prepared.meta)
    approx, margin, reference = _tiled_intervals(prepared, layout, codec, raw, hq, levels)
    assert torch.all((reference - approx.double()).abs() <= margin.double())
    assert (margin / reference.std(dim=1, keepdim=True)).median() < 1
    if levels == 1 and kernel.vector_bits == 512:
        # the same integer products as the AVX-512 row pass, summed in another order
        # (the AVX2 row pass scores exactly: its intervals are checked elsewhere)
        rowwise = torch.empty_like(approx)
        norms = kernel.row_norms(prepared, raw)
        kernel.bounded(prepared, raw, norms, rowwise, torch.empty_like(margin))
        # (rounding apart: a thousandth of the quantization bound, row by row)
        assert torch.all((approx - rowwise).abs() <= 1e-3 * margin)


@needs_bounded
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("levels", [1, 2])
def test_the_largest_codes_do_not_overflow_the_integer_products(sign, levels):
    """Every code at ±127 on both sides, so every product is 127 · 127 (on AVX2 a pair of
    them, 32,258, sits just below int16's limit; b + 128 against 127 would pass it)."""
    specs = [LayerSpec("flat", 64, 64, 16, 16, 8), LayerSpec("long", 64, 256, 16, 64, 1)]
    layout = RowLayout(specs)
    codec = RowCodec(layout, torch.int8)
    n = 64
    values = torch.ones(n, layout.width, dtype=torch.float64)
    values[1::2] *= -1.0
    raw = codec.encode(values)
    hq = {s.name: torch.full((1, s.d1, s.d2), sign) for s in specs}
    kernel = STATUS.kernel
    prepared = kernel.prepare(layout, codec, hq)
    assert torch.all(prepared.bounded.packed.abs() == 127)
    approx, margin, reference = _tiled_intervals(prepared, layout, codec, raw, hq, levels)
    assert torch.all((reference - approx.double()).abs() <= margin.double())
    assert torch.all((reference - approx.double()).abs() <= 1e-3 * reference.abs())


@needs_bounded
@pytest.mark.parametrize("needed,k", [(1, 1), (4, 15)])
@pytest.mark.parametrize("seed", range(3))
def test_refined_tiles_take_the_two_level_bound_and_others_keep_theirs(
    seed, needed, k, monkeypatch
):
    """After a one-level pass, the second level on the tiles holding ``needed`` undecided
    rows (per query): those rows get the two-level interval (it holds, and its margin is the
    two-level pass's), every other row keeps its one-level interval unchanged."""
    layout, codec, raw = int8_rows(300, seed + 20)
    kernel, hq = STATUS.kernel, queries(3, seed + 30)
    prepared = kernel.prepare(layout, codec, hq)
    exact = kernel.score(prepared, raw, torch.empty(3, 300, dtype=torch.float32))
    norms = kernel.row_norms(prepared, raw)
    tiles = TiledRows(kernel, prepared.meta, raw.clone())
    f32 = {"dtype": torch.float32}  # test_math makes float64 the session's default
    one, one_margin = torch.empty(3, 300, **f32), torch.empty(3, 300, **f32)
    tiles.bounded(prepared, 0, 300, norms, one, one_margin, 1)
    two, two_margin = torch.empty(3, 300, **f32), torch.empty(3, 300, **f32)
    tiles.bounded(prepared, 0, 300, norms, two, two_margin, 2)
    approx, margin = one.clone(), one_margin.clone()
    # cuts that leave some rows undecided and decide others: the k-th best lower bound, the
    # k-th smallest upper bound, for queries 0 and 2 only (query 1's mask allows nothing)
    monkeypatch.setattr("lorif_serve.server.tiled._REFINE_ROWS", 3 * needed)  # B = 3
    top = (one - one_margin).topk(k, dim=1).values[:, -1]
    bottom = (one + one_margin).topk(k, dim=1, largest=False).values[:, -1]
    ok = torch.ones(3, 300, dtype=torch.bool)
    ok[1] = False
    undecided = ((one + one_margin >= top[:, None]) | (one - one_margin <= bottom[:, None])) & ok
    pairs = tiles.refine(prepared, 0, 300, norms, approx, margin, undecided)
    want = undecided[:, :288].reshape(3, 18, 16).sum(dim=2) >= needed
    assert pairs == int(want.sum()) and 0 < pairs < 2 * 18
    refined = torch.zeros(3, 300, dtype=torch.bool)
    refined[:, :288] = want.repeat_interleave(16, dim=1)
    assert torch.equal(margin[refined], two_margin[refined])
    assert torch.equal(margin[~refined], one_margin[~refined])
    assert torch.equal(approx[~refined], one[~refined])
    assert torch.all((exact - approx).abs() <= margin)
    assert torch.all((approx - two).abs()[refined] <= 1e-3 * two_margin[refined])


@needs_bounded
def test_tiles_give_back_every_row_and_score_exactly():
    """Tiling in place loses nothing: any rows come back in stored order (tiles and tail),
    and exact scores through the tiles equal the kernel's on the stored rows."""
    layout, codec, raw = int8_rows(77, 4)
    kernel = STATUS.kernel
    prepared = kernel.prepare(layout, codec, queries(2, 8))
    tiles = TiledRows(kernel, prepared.meta, raw.clone())
    assert tiles.tiled == 64 and not torch.equal(tiles.data[:64], raw[:64])
    which = torch.tensor([76, 0, 15, 16, 63, 64, 5, 5])
    assert torch.equal(tiles.rows(which), raw[which])
    assert torch.equal(tiles.block(0, 77), raw)
    want = kernel.score(prepared, raw, torch.empty(2, 77, dtype=torch.float32))
    got = torch.empty(2, 77, dtype=torch.float32)
    tiles.score(prepared, 0, 77, got)
    assert torch.equal(got, want)


def _scanner(raw, layout, codec, bounded, resident, kernel=None):
    reader = SimpleNamespace(
        layout=layout, codec=codec, rows=lambda a, b: raw[a:b], n_examples=raw.shape[0]
    )
    return FusedScanner(kernel or STATUS.kernel, reader, raw if resident else None, bounded)


def _blocks(raw, size):
    return ((raw[a : a + size], a, 0.0, None) for a in range(0, raw.shape[0], size))


@needs_bounded
# streamed blocks take the row pass, the same with or without AMX
@pytest.mark.parametrize("resident,products", [(True, "vector"), (False, "vector"), (True, "amx")])
@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_bounded_scan_returns_the_fused_ranking_bit_for_bit(
    seed, resident, fallback, products, monkeypatch
):
    """Random queries over rows where every 7th row is a copy of row 0 (ties); ``fallback``:
    every block after the first is scored exactly, as when the bound stops pruning. Bit for
    bit against the fused scan of the same kernel (the AMX orientation of a layer sums its
    float32 products in another order, so the two kernels' exact scores may differ in the
    last bits)."""
    kernel = _tiled_kernel(products)
    if fallback:
        monkeypatch.setattr("lorif_serve.server.fused_scan._MAX_KEPT", 0.0)
    if seed >= 3:  # two query levels: a probe that always finds the bound too wide
        monkeypatch.setattr("lorif_serve.server.tiled.TiledRows.levels", lambda *_: 2)
    layout, codec, raw = int8_rows(403, seed, duplicate_every=7)  # 25 tiles and 3 rows
    hq = queries(3, seed + 20)
    if seed % 2:  # make the copies the best rows for query 0, the worst for query 1
        values = codec.decode(raw[:1], torch.float64)
        for spec in SPECS:
            g = layout.gradients(spec, values).reshape(spec.d1, spec.d2).float()
            hq[spec.name][0] = g
            hq[spec.name][1] = -g
    query = ScanQuery(hq)
    results = {}
    for bounded in (False, True):
        scanner = _scanner(raw, layout, codec, bounded, resident, kernel)
        results[bounded] = scanner.scan(query, _blocks(raw, 64), top_k=12, bottom_k=9)
    again = scanner.scan(query, _blocks(raw, 64), top_k=12, bottom_k=9)  # cached row norms
    fused, bounded = results[False], results[True]
    for answer in (bounded, again):
        for got, want in ((answer.top, fused.top), (answer.bottom, fused.bottom)):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert bounded.rescored < 403 or fallback


@needs_kernel
def test_fused_scan_ranks_like_the_reference():
    layout, codec, raw = int8_rows(200, 3)
    hq = queries(2, 5)
    outcome = _scanner(raw, layout, codec, False, True).scan(
        ScanQuery(hq), _blocks(raw, 50), top_k=5, bottom_k=0
    )
    reference = score_reference(layout, codec.decode(raw, torch.float64), hq)
    assert torch.equal(outcome.top[1], reference.topk(5, dim=1).indices)


def test_engine_falls_back_to_torch_without_the_kernel(monkeypatch, tmp_path):
    from lorif_serve.server.engine import ScanEngine
    from tests.builders import build_api_index

    monkeypatch.setenv("LORIF_FUSED_KERNEL", "0")
    from lorif_serve.indexer.store.reader import IndexReader

    with IndexReader(build_api_index(tmp_path / "i.h5", "int8")) as reader:
        engine = ScanEngine(reader, torch.device("cpu"), "ram")
        assert engine.kernel == "torch" and "LORIF_FUSED_KERNEL" in engine.kernel_reason
        with pytest.raises(ConfigError, match="unavailable"):
            ScanEngine(reader, torch.device("cpu"), "ram", kernel="fused")


def test_low_rank_query_modes_keep_the_torch_path(tmp_path):
    """energy / rank queries are approximate by request: the exact kernels must not answer."""
    from lorif_serve.indexer.store.reader import IndexReader
    from lorif_serve.server.engine import ScanEngine
    from tests.builders import build_api_index

    with IndexReader(build_api_index(tmp_path / "i.h5", "int8")) as reader:
        hq = {s.name: torch.randn(2, s.d1, s.d2, dtype=torch.float32) for s in reader.layout.layers}
        answers = [
            ScanEngine(reader, torch.device("cpu"), "ram", kernel=k).scan(ScanQuery(hq, rank=1), 5)
            for k in ("auto", "torch")
        ]
        assert torch.equal(answers[0].top_rows, answers[1].top_rows)
        assert torch.allclose(answers[0].top_scores, answers[1].top_scores)


@pytest.mark.parametrize("largest", [True, False])
def test_kth_with_is_the_kth_after_merging_and_leaves_the_merger_alone(largest):
    """The cuts of the second level: the k-th value with a block added, ties and masks
    included, computed without merging it."""
    from lorif_serve.server.topk import RowMerger

    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(-5, 5, (2, 40), generator=generator).float()  # many ties
    allowed = torch.rand(2, 40, generator=generator) > 0.3
    merger = RowMerger(4, largest, allowed)
    merger.add(scores[:, :20], torch.arange(20))
    before = (merger.scores.clone(), merger.rows.clone())
    got = merger.kth_with(scores[:, 20:], torch.arange(20, 40))
    assert torch.equal(merger.scores, before[0]) and torch.equal(merger.rows, before[1])
    merger.add(scores[:, 20:], torch.arange(20, 40))
    assert torch.equal(got, merger.kth())
    few = RowMerger(50, largest).kth_with(scores, torch.arange(40))
    assert torch.all(few == (float("-inf") if largest else float("inf")))


def test_spectral_norm_bounds_hold_and_stay_tight():
    """The error terms' ‖E‖₂ are upper bounds, loose at most by side^(1/128) (reached when
    every singular value is equal), at the scales of real queries' residuals."""
    torch.manual_seed(0)
    cases = [
        torch.randn(5, 16, 64, dtype=torch.float64) * 1e-4,
        torch.randn(5, 72, 24, dtype=torch.float64) * 1e6,
        torch.eye(16, dtype=torch.float64).expand(2, 16, 16).clone(),
        torch.zeros(2, 4, 8, dtype=torch.float64),
    ]
    for matrix, bound in zip(cases, _spectral_norms(cases), strict=True):
        exact = torch.linalg.matrix_norm(matrix, ord=2)
        side = min(matrix.shape[1:])
        assert bool((bound >= exact * (1 - 1e-12)).all())
        assert bool((bound <= exact * side ** (1 / 128) * (1 + 1e-12)).all())
    equal = _spectral_norms([cases[2]])[0]
    assert float(equal[0]) > 1.02  # the worst case is reached: the bound is not exact


def test_query_quantization_is_the_same_in_groups_of_any_size(monkeypatch):
    """Layers of one shape are quantized a few at a time (``_GROUP_BYTES``): one layer per
    group gives every code, correction and scale of one group for all, and the same error
    terms (to a float32 step: batched float64 products may round differently by size)."""
    specs = [*SPECS, LayerSpec("sq2", 64, 64, 16, 16, 8), LayerSpec("sq3", 64, 64, 16, 16, 8)]
    layout = RowLayout(specs)
    codec = RowCodec(layout, torch.int8)
    hq = queries(3, specs=specs)
    together = prepare_query(layout, codec, hq, bounded=True).bounded
    monkeypatch.setattr(quantize, "_GROUP_BYTES", 1)
    apart = prepare_query(layout, codec, hq, bounded=True).bounded
    assert together is not None and apart is not None
    for field in dataclasses.fields(together):
        one, other = getattr(together, field.name), getattr(apart, field.name)
        if field.name in ("eps", "fine_eps"):
            assert torch.allclose(one, other, rtol=2**-22, atol=0), field.name
        else:
            assert torch.equal(one, other), field.name


@needs_bounded
@pytest.mark.parametrize("levels", [1, 2])
def test_amx_and_vector_passes_take_the_same_integer_products(levels):
    """The AMX pass sums the vector pass's integer products in another order: the same
    approximate scores up to float32 rounding, inside the same margins (16 tiles a step at
    c = 1, a partial last step, a of 20 lanes in two chunks, b of 36 codes padded to 64)."""
    amx, vector = _tiled_kernel("amx"), _vector_kernel()
    n = 16 * (16 + 5) * amx.threads + 9
    layout, codec, raw = int8_rows(n, 7)
    hq = queries(3, 8)
    results = []
    for kernel in (amx, vector):
        prepared = kernel.prepare(layout, codec, hq)
        approx = torch.empty(3, n, dtype=torch.float32)
        margin = torch.empty_like(approx)
        norms = kernel.row_norms(prepared, raw)
        TiledRows(kernel, prepared.meta, raw.clone()).bounded(
            prepared, 0, n, norms, approx, margin, levels
        )
        results.append((approx, margin))
    (got, got_margin), (want, want_margin) = results
    assert torch.allclose(got_margin, want_margin, rtol=1e-6, atol=0)
    assert torch.all((got - want).abs() <= 1e-3 * want_margin)
    reference = score_reference(layout, codec.decode(raw, torch.float64), hq)
    assert torch.all((reference - got.double()).abs() <= got_margin.double())


def test_amx_orientation_puts_the_narrow_side_in_lanes():
    """With AMX, a (the per-row side) is the narrower side wherever b can be the tiles'
    inner dimension (a multiple of 4); the vector rule prefers 16-wide lanes."""
    from lorif_serve.server.kernels.prepared import _vector_side

    assert _vector_side(72, 192, amx=True) == "left"
    assert _vector_side(192, 72, amx=True) == "right"
    assert _vector_side(72, 192) == "right"  # 192 fills 16-float registers, 72 does not
    assert _vector_side(6, 72, amx=True) == "left"
    assert _vector_side(8, 6, amx=True) == "right"  # b must be a multiple of 4
    assert _vector_side(5, 7, amx=True) == _vector_side(5, 7)


def test_row_major_codes_sit_in_place_with_zeros_around():
    codes = torch.randint(-127, 128, (2, 20, 70), dtype=torch.int8)
    laid = quantize._row_major(codes, 20, 70).view(2, 32, 128)
    assert torch.equal(laid[:, :20, :70], codes)
    assert laid[:, 20:].abs().sum() == 0 and laid[:, :, 70:].abs().sum() == 0
