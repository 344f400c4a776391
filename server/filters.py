"""Metadata filters: one row mask per distinct filter, from per-field columns of codes.

At start-up each metadata field whose values are scalars (strings, numbers, booleans) becomes
a column of int32 codes, one per row (−1 where a row lacks the field), with its table of
distinct values; a condition is then a comparison over the distinct values and one
``isin`` over the codes. Masks are cached by the filter's canonical form (LRU), so a filter
that recurs costs nothing after its first query. Fields holding lists or objects (a chunk's
character ``span``) are not offered.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lorif_serve.client.protocol import AnyOf, Condition, FilterField, Prefix, Scalar
from lorif_serve.indexer.store import schema
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.errors import ProblemError

ID_FIELD = "id"
_MENU_VALUES = 50  # fields with at most this many distinct values list them in /v1/index
_CACHED_MASKS = 64


def _key(value: Scalar) -> str:
    """The canonical form of a value: JSON with its type (``true`` ≠ ``1``, ``1`` ≠ ``1.0``)."""
    return json.dumps([type(value).__name__, value])


def _kind(values: Sequence[Scalar]) -> str:
    kinds = {
        "boolean" if isinstance(v, bool) else "string" if isinstance(v, str) else "number"
        for v in values
    }
    return kinds.pop() if len(kinds) == 1 else "mixed"


@dataclass
class _Column:
    codes: np.ndarray  # (N,) int32, −1: the row has no such field
    values: list[Scalar] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def code(self, value: Scalar) -> int:
        key = _key(value)
        if key not in self.index:
            self.index[key] = len(self.values)
            self.values.append(value)
        return self.index[key]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


class FieldColumns:
    """The filterable fields of an index and the row masks of conditions on them."""

    def __init__(self, ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
        self.n = len(ids)
        self.ids = np.asarray(ids, dtype=str)
        self.columns: dict[str, _Column] = {}
        unfilterable: set[str] = set()
        for row, meta in enumerate(metadata):
            for name, value in meta.items():
                if name in unfilterable or name == ID_FIELD:
                    continue
                if not _is_scalar(value):
                    unfilterable.add(name)
                    self.columns.pop(name, None)
                    continue
                column = self.columns.get(name)
                if column is None:
                    column = self.columns[name] = _Column(np.full(self.n, -1, dtype=np.int32))
                column.codes[row] = column.code(value)

    @classmethod
    def from_reader(cls, reader: IndexReader) -> FieldColumns:
        metas = reader.dataset(schema.EXAMPLE_METADATA).asstr()[...]
        return cls(reader.example_ids(), [json.loads(m) for m in metas])

    def describe(self) -> list[FilterField]:
        fields = [FilterField(name=ID_FIELD, kind="id", distinct=0)]
        for name, column in sorted(self.columns.items()):
            menu = column.values if len(column.values) <= _MENU_VALUES else None
            fields.append(
                FilterField(
                    name=name,
                    kind=_kind(column.values),
                    distinct=len(column.values),
                    values=sorted(menu, key=_key) if menu is not None else None,
                )
            )
        return fields

    def check(self, conditions: Mapping[str, Condition]) -> None:
        """422 on a field the index does not offer."""
        unknown = sorted(set(conditions) - set(self.columns) - {ID_FIELD})
        if unknown:
            offered = ", ".join([ID_FIELD, *sorted(self.columns)])
            raise ProblemError(
                422, f"filter: unknown field(s) {unknown[:5]}; this index offers: {offered}"
            )

    def mask(self, conditions: Mapping[str, Condition]) -> np.ndarray:
        """(N,) bool: the rows meeting every condition."""
        self.check(conditions)
        allowed = np.ones(self.n, dtype=bool)
        for name, condition in conditions.items():
            allowed &= self._ids(condition) if name == ID_FIELD else self._field(name, condition)
        return allowed

    def _ids(self, condition: Condition) -> np.ndarray:
        if isinstance(condition, Prefix):
            return np.char.startswith(self.ids, condition.prefix)
        wanted = condition.any_of if isinstance(condition, AnyOf) else [condition]
        return np.isin(self.ids, [v for v in wanted if isinstance(v, str)])

    def _field(self, name: str, condition: Condition) -> np.ndarray:
        column = self.columns[name]
        if isinstance(condition, Prefix):
            codes = [
                code
                for code, value in enumerate(column.values)
                if isinstance(value, str) and value.startswith(condition.prefix)
            ]
        else:
            wanted = condition.any_of if isinstance(condition, AnyOf) else [condition]
            codes = [column.index[_key(v)] for v in wanted if _key(v) in column.index]
        return np.isin(column.codes, np.asarray(codes, dtype=np.int32))


def canonical(conditions: Mapping[str, Condition]) -> str:
    """One string per distinct filter (field order and value order do not matter)."""

    def form(condition: Condition) -> Any:
        if isinstance(condition, Prefix):
            return ["prefix", condition.prefix]
        if isinstance(condition, AnyOf):
            return ["in", sorted({_key(v) for v in condition.any_of})]
        return ["eq", _key(condition)]

    return json.dumps(sorted((name, form(c)) for name, c in conditions.items()))


class MaskCache:
    """Row masks by filter, least recently used dropped past ``size``; thread-safe."""

    def __init__(self, columns: FieldColumns, size: int = _CACHED_MASKS) -> None:
        self.columns, self.size = columns, size
        self._masks: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conditions: Mapping[str, Condition]) -> torch.Tensor:
        key = canonical(conditions)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = torch.from_numpy(self.columns.mask(conditions))
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > self.size:
                self._masks.popitem(last=False)
        return mask
