"""Index bytes per example, LoRIF against LoGRA-dense at equal D, for real model dims.

Computed from the layer shapes with the indexer's own layout (`RowLayout`), bf16 storage:
every linear inside the blocks is tracked, d1 = ⌊I/f⌋, d2 = ⌊O/f⌋.

    python -m benchmarks.storage
"""

from __future__ import annotations

from lorif_serve.indexer.core.factors import LayerSpec, RowLayout

from .common import write_result

MODELS = {  # name → (blocks, [(in, out) of each tracked linear in one block])
    "demo Llama (2 × d128)": (2, [(128, 128)] * 4 + [(128, 512), (128, 512), (512, 128)]),
    "SmolLM2-135M (30 × d576)": (
        30,
        [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)],
    ),
    "GPT-2 small (12 × d768)": (12, [(768, 2304), (768, 768), (768, 3072), (3072, 768)]),
}


def bytes_per_example(
    blocks: int, shapes: list[tuple[int, int]], f: int, c: int, dense: bool
) -> int:
    specs = [
        LayerSpec(
            f"{b}.{i}",
            fan_in,
            fan_out,
            fan_in // f,
            fan_out // f,
            min(c, fan_in // f, fan_out // f),
            dense,
        )
        for b in range(blocks)
        for i, (fan_in, fan_out) in enumerate(shapes)
    ]
    return 2 * RowLayout(specs).width


def main() -> None:
    rows = []
    for name, (blocks, shapes) in MODELS.items():
        for f in (4, 8, 16):
            dense = bytes_per_example(blocks, shapes, f, 1, True)
            for c in (1, 2):
                lorif = bytes_per_example(blocks, shapes, f, c, False)
                rows.append(
                    {
                        "model": name,
                        "f": f,
                        "c": c,
                        "lorif_bytes": lorif,
                        "dense_bytes": dense,
                        "ratio": dense / lorif,
                        "lorif_gb_per_million": lorif / 1e3,
                        "dense_gb_per_million": dense / 1e3,
                    }
                )
    table = (
        "| model | f | c | LoRIF bytes/example | LoGRA-dense bytes/example | ratio | "
        "LoRIF GB per 1 M examples | dense GB per 1 M |\n|---|---|---|---|---|---|---|---|\n"
    )
    table += "".join(
        f"| {r['model']} | {r['f']} | {r['c']} | {r['lorif_bytes']:,} | {r['dense_bytes']:,} | "
        f"{r['ratio']:.1f}× | {r['lorif_gb_per_million']:,.1f} | {r['dense_gb_per_million']:,.1f} |\n"
        for r in rows
    )
    write_result("storage", {"rows": rows}, table)


if __name__ == "__main__":
    main()
