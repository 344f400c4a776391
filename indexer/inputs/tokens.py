"""Tokenization shared by the build (prompt/completion records) and the query server."""

from __future__ import annotations

from typing import Any, Protocol


class Tokenizer(Protocol):
    is_fast: bool

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def decode(self, ids: list[int]) -> str: ...


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion and where the completion (the loss) starts.

    Prompt and completion are tokenized separately so the boundary never merges into one
    token; the completion's first token needs at least one token of context.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return prompt_ids + completion_ids, max(1, len(prompt_ids))
