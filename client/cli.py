"""``python -m client query --url … --prompt … --completion …``: print the top-k as a table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lorif_serve.client.clients import Client
from lorif_serve.client.errors import AttributionError
from lorif_serve.client.protocol import AttributionResponse, Explanation, ResultItem


def _first_line(text: str | None, width: int = 72) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


_CHUNK_KEYS = ("doc_id", "title", "chunk", "span")  # shown through the id and the text


def _metadata(item: ResultItem, width: int = 24) -> str:
    """``key=value`` pairs of the example's own metadata (e.g. ``topic=sport``), cut."""
    pairs = [(k, v) for k, v in (item.metadata or {}).items() if k not in _CHUNK_KEYS]
    text = ", ".join(f"{key}={value}" for key, value in pairs)
    return text if len(text) <= width else text[: width - 1] + "…"


def _text(item: ResultItem, width: int = 56) -> str:
    """The chunk's first line; after the first chunk, prefixed by its document's title."""
    meta = item.metadata or {}
    title = meta.get("title") if meta.get("chunk", 0) else None
    return _first_line(f"[{title}] {item.text or ''}" if title else item.text, width)


def _evidence(explanation: Explanation, tokens: int = 6, layers: int = 3) -> list[str]:
    """Two indented lines: the example's most influential tokens and layers."""
    strongest = sorted(explanation.tokens, key=lambda t: -abs(t.score))[:tokens]
    top_layers = sorted(explanation.layers, key=lambda p: -abs(p.score))[:layers]
    return [
        "      tokens: " + ", ".join(f"{t.text.strip()!r} {t.score:+.3g}" for t in strongest),
        "      layers: " + ", ".join(f"{p.layer} {p.score:+.3g}" for p in top_layers),
    ]


def format_table(items: list[ResultItem], title: str) -> str:
    rows = [f"{title}", f"{'rank':>4}  {'score':>12}  {'id':<28}  {'metadata':<24}  text"]
    for item in items:
        rows.append(
            f"{item.rank:>4}  {item.score:>12.5g}  {item.id:<28}  {_metadata(item):<24}  "
            f"{_text(item)}"
        )
        if item.explanation is not None:
            rows += _evidence(item.explanation)
    return "\n".join(rows)


def parse_filter(values: list[str]) -> dict[str, Any] | None:
    """``--filter`` values: a JSON object, or ``field=value`` (value read as JSON when it
    parses, e.g. ``chunk=0``, else as a string: ``topic=sport``), merged in order."""
    merged: dict[str, Any] = {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"error: --filter {value!r}: not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise SystemExit(f"error: --filter {value!r}: give a JSON object")
            merged.update(parsed)
            continue
        name, sep, raw = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --filter {value!r}: use field=value or a JSON object")
        try:
            merged[name] = json.loads(raw)
        except json.JSONDecodeError:
            merged[name] = raw
    return merged or None


def render(response: AttributionResponse) -> str:
    parts = []
    if response.query is not None:
        q, t = response.query, response.timings
        unscored = (
            f" ({q.unscored_tokens} unscored: no prompt to predict the first token from)"
            if q.unscored_tokens
            else ""
        )
        parts.append(
            f"completion tokens {q.completion_tokens}{unscored}, loss {q.loss:.3f}; index "
            f"{response.index.name} (N={response.index.n_examples:,}); {t.total_ms:.1f} ms "
            f"(featurize {t.featurize_ms:.1f}, precondition {t.precondition_ms:.1f}, "
            f"scan {t.scan_ms:.1f})"
        )
    parts.append(format_table(response.results or [], "proponents"))
    if response.opponents:
        parts.append(format_table(response.opponents, "opponents"))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client")
    commands = parser.add_subparsers(dest="command", required=True)
    query = commands.add_parser("query", help="attribute one completion")
    query.add_argument("--url", required=True, help="http(s)://host:port; host:port means http")
    query.add_argument("--prompt", default="")
    query.add_argument("--completion", required=True)
    query.add_argument("--top-k", type=int, default=10)
    query.add_argument("--opponents", action="store_true")
    query.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE|JSON",
        help='rank only matching examples: topic=sport, or \'{"topic": {"in": ["a", "b"]}}\'',
    )
    query.add_argument(
        "--explain", action="store_true", help="show each result's strongest tokens and layers"
    )
    query.add_argument("--api-key", help="default: $LORIF_API_KEY")
    query.add_argument("--timeout", type=float, default=60.0)
    query.add_argument("--json", action="store_true", help="print the raw JSON response")
    args = parser.parse_args(argv)
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
            response = client.attribute(
                args.prompt,
                args.completion,
                top_k=args.top_k,
                opponents=args.opponents,
                filter=parse_filter(args.filter),
                explain=args.explain,
            )
    except AttributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(response.model_dump_json(indent=2) if args.json else render(response))
    return 0
