"""Which on-disk layout streams factor rows fastest: one packed (N, F) dataset, or one
dataset per layer per side ((N, c, d1) and (N, c, d2))?

Both files hold the same bytes (SmolLM2-135M dims: 30 blocks × 7 linears, f = 8, c = 1,
bf16). A scan reads row blocks of 1,024 examples into one preallocated buffer, as the
server does, from the page cache (warm) and after evicting the file (cold, via
posix_fadvise DONTNEED). Medians of 5.

    python -m benchmarks.layout
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .common import median_seconds, write_result

SMOLLM2_LINEARS = [
    (576, 576),
    (576, 192),
    (576, 192),
    (576, 576),
    (576, 1536),
    (576, 1536),
    (1536, 576),
]
BLOCK_ROWS = 1024


def widths(factor: int = 8, rank: int = 1) -> list[tuple[int, int]]:
    return [
        (rank * (i // factor), rank * (o // factor)) for _ in range(30) for i, o in SMOLLM2_LINEARS
    ]


def write_files(folder: Path, n: int) -> tuple[Path, Path, int]:
    sides = widths()
    total = sum(a + b for a, b in sides)
    rng = np.random.default_rng(0)
    packed_path, split_path = folder / "packed.h5", folder / "split.h5"
    with h5py.File(packed_path, "w") as f:
        ds = f.create_dataset("factors", (n, total), "<u2")
        for start in range(0, n, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, n)
            ds[start:stop] = rng.integers(0, 65535, (stop - start, total), dtype=np.uint16)
    with h5py.File(packed_path, "r") as src, h5py.File(split_path, "w") as f:
        column = 0
        for index, (left, right) in enumerate(sides):
            for side, width in (("left", left), ("right", right)):
                f.create_dataset(f"{index}/{side}", data=src["factors"][:, column : column + width])
                column += width
    return packed_path, split_path, total


def offsets(path: Path) -> list[tuple[int, int]]:
    """(byte offset, row width in values) of every contiguous dataset, in file order."""
    found: list[tuple[int, int]] = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda _, obj: (
                found.append((obj.id.get_offset(), obj.shape[1]))
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return found


def scan(path: Path, layout: list[tuple[int, int]], n: int, buffer: np.ndarray) -> None:
    maps = [np.memmap(path, "<u2", "r", offset=o, shape=(n, w)) for o, w in layout]
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        column = 0
        for mapped, (_, width) in zip(maps, layout, strict=True):
            buffer[: stop - start, column : column + width] = mapped[start:stop]
            column += width


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    n = 8192
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        packed, split, total = write_files(Path(tmp), n)
        nbytes = n * total * 2
        buffer = np.empty((BLOCK_ROWS, total), np.uint16)
        results = {}
        for name, path in (
            ("packed (N, F), 1 dataset", packed),
            ("per layer per side, 420 datasets", split),
        ):
            layout = offsets(path)
            warm = median_seconds(lambda p=path, lay=layout: scan(p, lay, n, buffer))
            cold_runs = []
            for _ in range(5):
                evict(path)
                cold_runs.append(
                    median_seconds(lambda p=path, lay=layout: scan(p, lay, n, buffer), 1, 0)
                )
            cold = sorted(cold_runs)[2]
            results[name] = {
                "warm_gb_s": nbytes / warm / 1e9,
                "cold_gb_s": nbytes / cold / 1e9,
                "datasets": len(layout),
            }
    table = (
        f"Scan of {n:,} rows × {total:,} bf16 values ({nbytes / 2**20:,.0f} MiB) "
        f"in blocks of {BLOCK_ROWS} rows.\n\n"
    )
    table += "| layout | datasets | warm page cache GB/s | cold GB/s |\n|---|---|---|---|\n"
    for name, r in results.items():
        table += f"| {name} | {r['datasets']} | {r['warm_gb_s']:.2f} | {r['cold_gb_s']:.2f} |\n"
    write_result("layout", {"rows": n, "values_per_row": total, "results": results}, table)


if __name__ == "__main__":
    main()
