"""The indexer's one validated configuration, saved inside every index it writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .curvature import DAMPING_RULES
from .schema import storage_dtype_name

PRECISIONS = ("float32", "float64", "bfloat16")


@dataclass(frozen=True)
class IndexConfig:
    """How to build an index. Every field changes the result, so resuming requires equality.

    Attributes:
        projection_factor: f in d1 = ⌊I/f⌋, d2 = ⌊O/f⌋ (ignored where d1/d2 are given).
        d1: explicit input-side projection width for every layer.
        d2: explicit output-side projection width for every layer.
        factor_rank: c, components stored per example per layer (capped at min(d1, d2)).
        dense: store the projected gradient itself (LoGRA-dense baseline) instead of factors.
        curvature_rank: r, eigenpairs kept per layer (capped at D).
        oversample: p of the randomized eigensolver.
        power_iters: q of the randomized eigensolver.
        damping: ``trace`` (0.5·tr/D), ``paper`` (0.1·mean of the top r+p eigenvalues) or λ.
        layers: shell globs over module names; empty = every linear inside the blocks.
        dtype: storage dtype of the factors: bfloat16, float16 or float32.
        precision: dtype the model and the gradient math run in.
        batch_size: examples per forward/backward.
        max_tokens: documents are cut into chunks of at most this many tokens.
        seed: seeds projections and the eigensolver's test matrices.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        checkpoint_rows: flush and journal progress at least every this many rows.
        on_bad_record: ``skip`` (report and continue) or ``fail``.
    """

    projection_factor: int | None = 8
    d1: int | None = None
    d2: int | None = None
    factor_rank: int = 1
    dense: bool = False
    curvature_rank: int = 64
    oversample: int = 10
    power_iters: int = 3
    damping: str | float = "trace"
    layers: tuple[str, ...] = field(default_factory=tuple)
    dtype: str = "bfloat16"
    precision: str = "float32"
    batch_size: int = 16
    max_tokens: int = 128
    seed: int = 0
    device: str = "auto"
    checkpoint_rows: int = 1024
    on_bad_record: str = "skip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", storage_dtype_name(self.dtype))
        object.__setattr__(self, "layers", tuple(self.layers))
        positive = ["factor_rank", "curvature_rank", "batch_size", "max_tokens", "checkpoint_rows"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_tokens < 2:
            raise ValueError("max_tokens must be ≥ 2 (one token of context, one predicted)")
        if self.oversample < 0 or self.power_iters < 0:
            raise ValueError("oversample and power_iters must be ≥ 0")
        if (self.d1 is None) != (self.d2 is None):
            raise ValueError("give both d1 and d2, or neither")
        if self.d1 is None and (self.projection_factor is None or self.projection_factor < 1):
            raise ValueError("projection_factor must be ≥ 1 when d1/d2 are not given")
        if self.d1 is not None and (self.d1 < 1 or (self.d2 or 0) < 1):
            raise ValueError("d1 and d2 must be ≥ 1")
        if isinstance(self.damping, str) and self.damping not in DAMPING_RULES:
            try:
                object.__setattr__(self, "damping", float(self.damping))
            except ValueError:
                raise ValueError(
                    f"damping must be one of {DAMPING_RULES} or a positive number, "
                    f"got {self.damping!r}"
                ) from None
        if not isinstance(self.damping, str) and not self.damping > 0:
            raise ValueError(f"damping must be positive, got {self.damping}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.on_bad_record not in ("skip", "fail"):
            raise ValueError(f"on_bad_record must be 'skip' or 'fail', got {self.on_bad_record!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name: saved → current' for every field that differs (for resume/serve refusals)."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{key}: {saved.get(key)!r} → {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]
