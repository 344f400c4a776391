"""Where long documents are cut: at sentence or word boundaries, never leaving a stub tail.

A chunk holds at most ``max_tokens`` tokens. Each cut is placed in the last quarter of the
allowed window: at the latest token that starts a sentence (the previous text ends in
``.``, ``!``, ``?`` or a line break), else at the latest token that starts a word, else at
the limit (a single word longer than the window). A final chunk shorter than a quarter of
``max_tokens`` is folded into the one before it: merged when both fit in ``max_tokens``,
otherwise the two are re-cut near their middle at a boundary. So answers read as text
("The minister said…", not "ace. The minister…") and no three-token tail of a document
becomes an example of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorif_serve.indexer.inputs.tokens import Tokenizer

WINDOW_FRACTION = 4  # a cut is searched in the last 1/4 of a chunk's token budget
TAIL_FRACTION = 4  # a final chunk shorter than max_tokens / 4 is folded
_SENTENCE_END = (".", "!", "?", "…", '."', '?"', '!"')


@dataclass(frozen=True)
class Boundaries:
    """Per token: does it start a word, does it start a sentence."""

    word: list[bool]
    sentence: list[bool]


def find_boundaries(
    text: str,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]] | None,
    tokenizer: Tokenizer,
) -> Boundaries:
    """From character offsets when the tokenizer gives them, else from decoded tokens."""
    word, sentence = [True] * len(ids), [True] * len(ids)
    for i in range(1, len(ids)):
        if offsets is not None:
            start = offsets[i][0]
            gap = text[offsets[i - 1][1] : start]
            before = _last_chars(text, offsets[i - 1][1])
            word[i] = bool(gap) and gap.isspace() or text[start : start + 1].isspace()
            sentence[i] = word[i] and ("\n" in gap or before.endswith(_SENTENCE_END))
        else:
            piece, previous = tokenizer.decode([ids[i]]), tokenizer.decode([ids[i - 1]])
            word[i] = piece[:1].isspace()
            sentence[i] = word[i] and (
                "\n" in previous or previous.rstrip().endswith(_SENTENCE_END)
            )
    return Boundaries(word, sentence)


def _last_chars(text: str, end: int, count: int = 2) -> str:
    """The last ``count`` characters of ``text[:end].rstrip()``, without copying the prefix
    (which would make long documents quadratic)."""
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return text[max(0, end - count) : end]


def _latest(flags: list[bool], low: int, high: int) -> int | None:
    """The latest position in (low, high] whose flag is set."""
    for i in range(high, low, -1):
        if i < len(flags) and flags[i]:
            return i
    return None


def _nearest(flags: list[bool], low: int, high: int, target: int) -> int | None:
    """The position in [low, high] nearest to ``target`` whose flag is set."""
    candidates = [i for i in range(low, high + 1) if i < len(flags) and flags[i]]
    return min(candidates, key=lambda i: (abs(i - target), i)) if candidates else None


def chunk_starts(n: int, max_tokens: int, boundaries: Boundaries) -> list[int]:
    """Token positions where chunks start (the first is 0); every chunk ≤ ``max_tokens``."""
    starts, position = [0], 0
    window = max(1, max_tokens // WINDOW_FRACTION)
    while n - position > max_tokens:
        limit = position + max_tokens
        low = limit - window
        cut = (
            _latest(boundaries.sentence, low, limit)
            or _latest(boundaries.word, low, limit)
            or limit
        )
        starts.append(cut)
        position = cut
    if len(starts) > 1 and n - starts[-1] < max(2, max_tokens // TAIL_FRACTION):
        previous = starts[-2]
        starts.pop()
        if n - previous > max_tokens:  # re-cut the last two chunks near their middle
            low, high = n - max_tokens, previous + max_tokens
            middle = (previous + n) // 2
            cut = (
                _nearest(boundaries.sentence, low, high, middle)
                or _nearest(boundaries.word, low, high, middle)
                or middle
            )
            starts.append(cut)
    return starts


def first_line(text: str, width: int = 80) -> str:
    """The document's title: its first non-empty line, cut to ``width`` characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"
