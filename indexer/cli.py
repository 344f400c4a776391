"""``python -m indexer`` / ``lorif-index``: build, info, verify."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

from lorif_serve.errors import LorifError
from lorif_serve.indexer.build.config import IndexConfig
from lorif_serve.indexer.build.distributed import from_environment
from lorif_serve.indexer.build.pipeline import build_index
from lorif_serve.indexer.build.summary import BuildSummary
from lorif_serve.indexer.store.reader import IndexReader


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorif-index", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build",
        help="build (or resume) an index",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("--model", required=True, help="model directory or .gguf file")
    build.add_argument("--data", required=True, help=".jsonl file, text directory or saved dataset")
    build.add_argument("--out", required=True, type=Path, help="index file to write (.h5)")
    add_config_flags(build)
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    info = commands.add_parser("info", help="print an index's metadata")
    info.add_argument("index", type=Path)
    info.add_argument("--json", action="store_true", help="raw JSON metadata")
    info.add_argument(
        "--skipped", action="store_true", help="list the skipped records (the first 20 kept)"
    )
    verify = commands.add_parser("verify", help="check checksums, shapes and format version")
    verify.add_argument("index", type=Path)
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per ``IndexConfig`` field, with the field's help text and default."""
    hints = get_type_hints(IndexConfig)
    defaults = IndexConfig()
    for spec in fields(IndexConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = getattr(defaults, spec.name)
        kind = hints[spec.name]
        extra: dict[str, Any] = {"dest": spec.name, "help": spec.metadata["help"]}
        if "choices" in spec.metadata:
            extra["choices"] = spec.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=default, **extra)
        elif spec.name == "layers":
            parser.add_argument(flag, nargs="*", default=list(default), **extra)
        elif kind in (int, int | None):
            parser.add_argument(flag, type=int, default=default, **extra)
        else:
            parser.add_argument(flag, default=default, **extra)


def _config(args: argparse.Namespace) -> IndexConfig:
    values = {spec.name: getattr(args, spec.name) for spec in fields(IndexConfig)}
    return IndexConfig(**{**values, "layers": tuple(values["layers"])})


SHOWN_SKIPPED = 10  # skipped records the build summary lists


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def print_summary(summary: BuildSummary) -> None:
    state = "already complete" if summary.already_complete else "built"
    print(f"\nindex {state}: {summary.path}")
    print(f"  examples            {summary.n_examples:,} ({summary.n_tokens:,} tokens)")
    print(f"  layers              {summary.n_layers}")
    ratio = summary.dense_bytes_per_example / max(1, summary.bytes_per_example)
    print(
        f"  bytes per example   {summary.bytes_per_example:,} "
        f"(LoGRA-dense at the same D: {summary.dense_bytes_per_example:,}, {ratio:.1f}x more)"
    )
    dense_total = summary.dense_bytes_per_example * summary.n_examples
    print(
        f"  file size           {_mib(summary.file_bytes)} "
        f"(dense factors would be {_mib(dense_total)})"
    )
    if summary.resumed_from_row:
        print(f"  resumed from row    {summary.resumed_from_row:,}")
    for phase, seconds in summary.phase_seconds.items():
        print(f"  {phase:<19} {seconds:8.2f} s")
    if "factors" in summary.phase_seconds:
        rate = summary.n_examples / max(summary.phase_seconds["factors"], 1e-9)
        print(f"  throughput          {rate:,.1f} examples/s (factor phase)")
    if summary.bad_records:
        print(f"  skipped records     {len(summary.bad_records)}:")
        for record in summary.bad_records[:SHOWN_SKIPPED]:
            print(f"    {record}")
        if len(summary.bad_records) > SHOWN_SKIPPED:
            more = len(summary.bad_records) - SHOWN_SKIPPED
            print(f"    … and {more} more (`lorif-index info --skipped` lists the first 20)")


def describe_curvature(config: dict[str, Any]) -> str:
    """One line naming the curvature kind an index holds."""
    kind = config["curvature"]
    if kind in ("factors", "gradients"):
        source = "stored factors" if kind == "factors" else "dense gradients (Nyström)"
        return f"Woodbury subspace of the {source}, r={config['curvature_rank']}"
    name = {"kfac": "K-FAC", "ekfac": "EK-FAC"}[kind]
    return f"{name} in the projected space, factors truncated {config['factor_metric']}"


def print_info(reader: IndexReader) -> None:
    meta = reader.metadata
    config, model, data = meta["config"], meta["model"], meta["dataset"]
    print(f"{reader.path}  (format v{reader.format_version}, created {meta['created_at']})")
    print(
        f"  model     {model['name']}  [{model['architecture']}]  "
        f"weights {model['weights_hash'][:16]}"
    )
    print(
        f"  data      {data['path']}  N={data['n']:,}  tokens={data['tokens']:,}  "
        f"skipped={data['bad_records']}"
    )
    kind = "LoGRA-dense" if config["dense"] else f"LoRIF c={config['factor_rank']}"
    print(
        f"  method    {kind}, storage {reader.storage_dtype}, "
        f"{reader.bytes_per_example:,} bytes/example"
    )
    print(f"  curvature {describe_curvature(config)}, damping={config['damping']}")
    print(f"  loss      {meta['loss']}")
    print(f"  {'layer':<40} {'I':>6} {'O':>6} {'d1':>5} {'d2':>5} {'c':>3} {'r':>5} {'λ':>10}")
    for i, spec in enumerate(reader.layers):
        curvature = reader.curvature(i)
        c = "-" if spec.dense else str(spec.rank)
        print(
            f"  {spec.name:<40} {spec.in_features:>6} {spec.out_features:>6} {spec.d1:>5} "
            f"{spec.d2:>5} {c:>3} {curvature.rank:>5} {curvature.damping:>10.3g}"
        )


def print_skipped(reader: IndexReader) -> None:
    data = reader.metadata["dataset"]
    sample = data.get("bad_record_sample", [])
    print(f"{data['bad_records']} skipped records in {data['path']}", end="")
    print(f" (the first {len(sample)}):" if sample else "")
    for line in sample:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Over a file-size limit, get EFBIG (a clear error) instead of being killed by SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        if args.command == "build":
            dist = from_environment(args.device)
            quiet = args.quiet or (dist is not None and dist.rank != 0)
            summary = build_index(args.model, args.data, args.out, _config(args), not quiet, dist)
            if dist is None or dist.rank == 0:
                print_summary(summary)
        elif args.command == "info":
            with IndexReader(args.index) as reader:
                if args.json:
                    print(json.dumps(reader.metadata, indent=2))
                elif args.skipped:
                    print_skipped(reader)
                else:
                    print_info(reader)
        else:
            with IndexReader(args.index) as reader:
                problems = reader.verify()
            if problems:
                for problem in problems:
                    print(f"CORRUPT: {problem}", file=sys.stderr)
                return 1
            print(f"{args.index}: OK ({reader.n_examples:,} examples, all checksums match)")
    except LorifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if args.command == "verify" else 2
    except KeyboardInterrupt:
        print("\ninterrupted; progress is saved: rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``| head``): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
