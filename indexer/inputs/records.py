"""Training records: JSONL, a directory of text files, or a saved Hugging Face dataset.

Each reader yields ``Record`` or ``BadRecord`` (with file and line), never dropping a
problem silently; ``indexer.inputs.examples`` turns records into tokenized examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorif_serve.errors import DataError


@dataclass(frozen=True)
class Record:
    id: str
    source: str  # "file:line" or "file", for error reports
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BadRecord:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def _record_from_mapping(row: dict[str, Any], default_id: str, source: str) -> Record | BadRecord:
    if not isinstance(row, dict):
        return BadRecord(source, "record is not a JSON object")
    doc_id = str(row.get("id", default_id))
    meta = {k: v for k, v in row.items() if k not in ("id", "text", "prompt", "completion")}
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            return BadRecord(source, "'text' is empty or not a string")
        return Record(doc_id, source, text=row["text"], metadata=meta)
    if "completion" in row:
        prompt, completion = row.get("prompt", ""), row["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            return BadRecord(source, "'prompt'/'completion' must be strings, completion non-empty")
        return Record(doc_id, source, prompt=prompt, completion=completion, metadata=meta)
    return BadRecord(source, "missing field: need 'text' or 'completion'")


def _read_jsonl(path: Path) -> Iterator[Record | BadRecord]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            source = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield BadRecord(source, "not valid UTF-8")
                continue
            except json.JSONDecodeError as exc:
                yield BadRecord(source, f"invalid JSON at column {exc.colno} ({exc.msg})")
                continue
            yield _record_from_mapping(row, f"{path.stem}:{number}", source)


def _read_text_dir(root: Path) -> Iterator[Record | BadRecord]:
    for path in sorted(p for p in root.rglob("*.txt") if p.is_file()):
        relative = path.relative_to(root)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            yield BadRecord(str(path), f"not valid UTF-8 at byte {exc.start}")
            continue
        if not text.strip():
            yield BadRecord(str(path), "empty file")
            continue
        folder = str(relative.parent) if str(relative.parent) != "." else ""
        meta = {"folder": folder} if folder else {}
        yield Record(str(relative.with_suffix("")), str(path), text=text, metadata=meta)


def _read_hf_dataset(root: Path) -> Iterator[Record | BadRecord]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise DataError(
            "reading a saved Hugging Face dataset needs the 'datasets' package"
        ) from exc
    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{root}: dataset dict has no 'train' split (splits: {list(loaded)})")
        loaded = loaded["train"]
    for number, row in enumerate(loaded):
        yield _record_from_mapping(dict(row), f"row{number}", f"{root}[{number}]")


def read_records(path: str | Path) -> Iterator[Record | BadRecord]:
    """Records from a ``.jsonl`` file, a text-file directory or a ``save_to_disk`` directory."""
    root = Path(path)
    if root.is_file():
        if root.suffix not in (".jsonl", ".json"):
            raise DataError(f"{root}: expected a .jsonl file or a directory")
        return _read_jsonl(root)
    if root.is_dir():
        if (root / "dataset_info.json").exists() or (root / "dataset_dict.json").exists():
            return _read_hf_dataset(root)
        return _read_text_dir(root)
    raise DataError(f"{root}: no such file or directory")
