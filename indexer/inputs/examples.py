"""Records become examples: tokenized, chunked, with the loss mask the build uses.

Long documents are cut into chunks of at most ``max_tokens`` tokens at sentence or word
boundaries (``indexer.inputs.chunking``) with ids ``<doc id>#<chunk>`` and metadata naming
the document (``doc_id``, ``title``, ``chunk``, character ``span``); prompt/completion
records are one example whose loss covers the completion only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lorif_serve.errors import DataError
from lorif_serve.indexer.inputs.chunking import chunk_starts, find_boundaries, first_line
from lorif_serve.indexer.inputs.records import BadRecord, Record
from lorif_serve.indexer.inputs.tokens import Tokenizer, encode_prompt_completion


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    tokens: list[int]
    loss_start: int  # tokens before this index are context (no loss)
    metadata: dict[str, Any]


def _chunks(record: Record, tokenizer: Tokenizer, max_tokens: int) -> Iterator[Example | BadRecord]:
    text = record.text or ""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = list(encoded["input_ids"])
    offsets = encoded.get("offset_mapping") if tokenizer.is_fast else None
    starts = chunk_starts(len(ids), max_tokens, find_boundaries(text, ids, offsets, tokenizer))
    title = first_line(text)
    for chunk, (start, stop) in enumerate(zip(starts, [*starts[1:], len(ids)], strict=True)):
        piece = ids[start:stop]
        chunk_id = f"{record.id}#{chunk}"
        if len(piece) < 2:
            yield BadRecord(
                f"{record.source} ({chunk_id})", "fewer than 2 tokens: nothing to predict"
            )
            continue
        meta: dict[str, Any] = {**record.metadata}
        for key, value in (("doc_id", record.id), ("title", title), ("chunk", chunk)):
            meta.setdefault(key, value)  # a record's own metadata wins
        if offsets is not None:
            first, last = offsets[start][0], offsets[stop - 1][1]
            raw = text[first:last]  # tokens may carry their leading space: trim it off
            first, last = first + len(raw) - len(raw.lstrip()), last - len(raw) + len(raw.rstrip())
            meta.setdefault("span", [first, last])
            chunk_text = text[first:last]
        else:
            chunk_text = tokenizer.decode(piece)
        yield Example(chunk_id, chunk_text, piece, 0, meta)


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
    source: str = "the input",
) -> tuple[list[Example], list[BadRecord]]:
    """Tokenize and chunk records. Duplicate ids are bad records too.

    ``source`` names the input in errors ("0 records in FILE").
    """
    examples: list[Example] = []
    bad: list[BadRecord] = []
    seen: set[str] = set()
    count = 0
    for record in records:
        count += 1
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
    if count == 0:
        raise DataError(f"0 records in {source}")
    if not examples:
        raise DataError("no usable examples" + (f"; first problem: {bad[0]}" if bad else ""))
    return examples, bad


def examples_digest(examples: list[Example]) -> str:
    """sha256 over ids, token ids and loss masks: the identity of what was indexed."""
    hasher = hashlib.sha256()
    for example in examples:
        hasher.update(json.dumps([example.id, example.tokens, example.loss_start]).encode())
    return hasher.hexdigest()
