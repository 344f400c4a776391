"""Training data: JSONL, a directory of text files, or a saved Hugging Face dataset.

Records become examples: long documents are cut into chunks of at most ``max_tokens``
tokens with ids ``<doc id>#<chunk>``; prompt/completion records are one example whose loss
covers the completion only. Bad records are reported with their source, never dropped
silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .attribution import encode_prompt_completion


class Tokenizer(Protocol):
    is_fast: bool

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def decode(self, ids: list[int]) -> str: ...


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


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    tokens: list[int]
    loss_start: int  # tokens before this index are context (no loss)
    metadata: dict[str, Any]


class DataError(ValueError):
    """Bad input data when ``on_bad_record='fail'``, or input that cannot be read at all."""


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
                yield BadRecord(source, f"invalid JSON ({exc.msg})")
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


def _chunks(record: Record, tokenizer: Tokenizer, max_tokens: int) -> Iterator[Example | BadRecord]:
    text = record.text or ""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = list(encoded["input_ids"])
    offsets = encoded.get("offset_mapping") if tokenizer.is_fast else None
    for chunk, start in enumerate(range(0, len(ids), max_tokens)):
        piece = ids[start : start + max_tokens]
        chunk_id = f"{record.id}#{chunk}"
        if len(piece) < 2:
            yield BadRecord(
                f"{record.source} ({chunk_id})", "fewer than 2 tokens: nothing to predict"
            )
            continue
        if offsets is not None:
            chunk_text = text[offsets[start][0] : offsets[start + len(piece) - 1][1]]
        else:
            chunk_text = tokenizer.decode(piece)
        yield Example(chunk_id, chunk_text, piece, 0, dict(record.metadata))


def _prompt_completion(
    record: Record, tokenizer: Tokenizer, max_tokens: int
) -> Example | BadRecord:
    tokens, loss_start = encode_prompt_completion(
        tokenizer, record.prompt or "", record.completion or ""
    )
    if len(tokens) > max_tokens:
        return BadRecord(record.source, f"{len(tokens)} tokens, over max_tokens={max_tokens}")
    if len(tokens) < 2 or loss_start >= len(tokens):
        return BadRecord(record.source, "fewer than 2 tokens: nothing to predict")
    meta = {**record.metadata, "prompt_chars": len(record.prompt or "")}
    text = (record.prompt or "") + (record.completion or "")
    return Example(record.id, text, tokens, loss_start, meta)


def make_examples(
    records: Iterator[Record | BadRecord],
    tokenizer: Tokenizer,
    max_tokens: int,
    on_bad: str = "skip",
) -> tuple[list[Example], list[BadRecord]]:
    """Tokenize and chunk records. Duplicate ids are bad records too."""
    examples: list[Example] = []
    bad: list[BadRecord] = []
    seen: set[str] = set()
    for record in records:
        produced: list[Example | BadRecord]
        if isinstance(record, BadRecord):
            produced = [record]
        elif record.id in seen:
            produced = [BadRecord(record.source, f"duplicate id {record.id!r}")]
        elif record.text is not None:
            seen.add(record.id)
            produced = list(_chunks(record, tokenizer, max_tokens))
        else:
            seen.add(record.id)
            produced = [_prompt_completion(record, tokenizer, max_tokens)]
        for item in produced:
            if isinstance(item, BadRecord):
                if on_bad == "fail":
                    raise DataError(str(item))
                bad.append(item)
            else:
                examples.append(item)
    if not examples:
        raise DataError("no usable examples" + (f"; first problem: {bad[0]}" if bad else ""))
    return examples, bad


def examples_digest(examples: list[Example]) -> str:
    """sha256 over ids, token ids and loss masks: the identity of what was indexed."""
    hasher = hashlib.sha256()
    for example in examples:
        hasher.update(json.dumps([example.id, example.tokens, example.loss_start]).encode())
    return hasher.hexdigest()
