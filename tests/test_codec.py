"""int8 rows: the codec against a float64 reference, int8 indexes against float32 ones."""

import pytest
import torch
from fastapi.testclient import TestClient

from lorif_serve.indexer import IndexConfig, IndexReader, build_index
from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from tests.builders import brute_force, make_app
from tests.test_index import QUERIES, examples_for, index_scores
from tests.tiny import loaded

SPECS = [LayerSpec("attn", 8, 8, 4, 3, 2), LayerSpec("mlp", 8, 16, 2, 5, 1, dense=True)]


def rows_spanning_magnitudes(n=12, seed=0):
    """Rows whose sizes span 12 orders of magnitude, one segment all zeros."""
    layout = RowLayout(SPECS)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(n, layout.width, generator=generator, dtype=torch.float64)
    values *= torch.logspace(-8, 4, n, dtype=torch.float64)[:, None]
    values[3, : 2 * 4] = 0  # the left factor of layer "attn" in row 3
    return layout, values


def test_int8_round_trip_error_is_half_a_step_of_each_segment():
    layout, values = rows_spanning_magnitudes()
    codec = RowCodec(layout, torch.int8)
    raw = codec.encode(values)
    assert raw.dtype == torch.int8 and raw.shape == (values.shape[0], layout.width + 4 * 3)
    decoded = codec.decode(raw, torch.float64)
    start = 0
    for length in (2 * 4, 2 * 3, 2 * 5):  # left, right of "attn"; the dense "mlp"
        segment = values[:, start : start + length]
        step = segment.abs().amax(dim=1, keepdim=True) / 127  # the reference scale
        error = (decoded[:, start : start + length] - segment).abs()
        assert torch.all(error <= step / 2 * (1 + 1e-6) + 1e-300)
        start += length
    assert torch.equal(decoded[3, :8], torch.zeros(8, dtype=torch.float64))
    # Every row keeps its relative precision, whatever its size.
    relative = (decoded - values).norm(dim=1) / values.norm(dim=1)
    assert relative.max() < 0.01


def test_decode_into_a_reused_buffer_equals_decode():
    layout, values = rows_spanning_magnitudes()
    codec = RowCodec(layout, torch.int8)
    raw = codec.encode(values)
    buffer = torch.full((20, layout.width), float("nan"), dtype=torch.float32)
    codec.decode_into(raw[2:9], buffer[:7])
    assert torch.equal(buffer[:7], codec.decode(raw[2:9]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_float_codecs_only_round(dtype):
    layout, values = rows_spanning_magnitudes()
    codec = RowCodec(layout, dtype)
    raw = codec.encode(values.float())
    assert codec.width == layout.width and raw.dtype == dtype
    assert torch.equal(codec.decode(raw), values.float().to(dtype).float())


def test_int8_index_scores_match_float32_index(tmp_path):
    model = loaded()
    examples = examples_for(model, count=16)
    scores = {}
    for dtype in ("fp32", "int8"):
        config = IndexConfig(projection_factor=2, factor_rank=2, dtype=dtype, precision="float64")
        build_index(model, examples, tmp_path / f"{dtype}.h5", config, progress=False)
        with IndexReader(tmp_path / f"{dtype}.h5") as reader:
            scores[dtype], _ = index_scores(reader, model, QUERIES)
            if dtype == "int8":
                assert reader.bytes_per_example == reader.layout.width + 4 * 2 * len(reader.layers)
                width = reader.layout.width
    # Rounding moves a value by ≤ 1/254 of its segment's largest (rms ≈ 1/440): about 1 % of
    # a factor's norm, per side; the scores move by the same order, never by 3 %.
    reference, quantized = scores["fp32"], scores["int8"]
    relative = (quantized - reference).norm(dim=1) / reference.norm(dim=1)
    assert 0 < relative.max() < 0.03
    assert torch.equal(quantized.argmax(dim=1), reference.argmax(dim=1))
    assert width > 0


@pytest.mark.parametrize("residency", ["ram", "disk"])
@pytest.mark.parametrize("block_rows", [16, 25])
def test_server_scans_int8_rows_like_the_decoded_brute_force(
    int8_index_path, residency, block_rows
):
    app, fake = make_app(int8_index_path, residency, block_rows)
    with TestClient(app) as client:
        response = client.post(
            "/v1/attributions", json={"prompt": "the market", "completion": "shares", "top_k": 6}
        )
        info = client.get("/v1/index").json()
    assert response.status_code == 200, response.text
    assert info["storage_dtype"] == "int8"
    body = response.json()
    scores, ids = brute_force(int8_index_path, fake, [("the market", "shares")])
    top = scores[0].topk(6).indices.tolist()
    assert [item["index"] for item in body["results"]] == top
    got = torch.tensor([item["score"] for item in body["results"]], dtype=torch.float64)
    torch.testing.assert_close(got, scores[0][top], rtol=1e-4, atol=1e-6)


def test_scoring_codes_then_scaling_equals_scoring_decoded_values():
    from lorif_serve.indexer.core.query import ScanQuery, score_block

    layout, values = rows_spanning_magnitudes()
    codec = RowCodec(layout, torch.int8)
    raw = codec.encode(values)
    generator = torch.Generator().manual_seed(3)
    hq = {
        s.name: torch.randn(2, s.d1, s.d2, generator=generator, dtype=torch.float64) for s in SPECS
    }
    codes = torch.empty(raw.shape[0], layout.width, dtype=torch.float64)
    scales = codec.codes_into(raw, codes)
    assert scales is not None and scales.shape == (raw.shape[0], len(SPECS))
    fast = score_block(layout, codes, ScanQuery(hq), scales)
    reference = score_block(layout, codec.decode(raw, torch.float64), ScanQuery(hq))
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=0)
    floats = RowCodec(layout, torch.float32)
    assert floats.codes_into(values.float(), torch.empty(values.shape, dtype=torch.float32)) is None
