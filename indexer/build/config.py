"""The indexer's one validated configuration, saved inside every index it writes.

Each field carries its help text in ``metadata["help"]``; the command line
(``indexer.cli``) is generated from these fields, so a new setting needs no second edit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lorif_serve.errors import ConfigError
from lorif_serve.indexer.core.curvature import CURVATURE_KINDS, DAMPING_RULES, parse_damping
from lorif_serve.indexer.store.schema import storage_dtype_name

PRECISIONS = ("float32", "float64", "bfloat16")
BAD_RECORD_POLICIES = ("skip", "fail")
FACTOR_METRICS = ("raw", "whitened")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class IndexConfig:
    """How to build an index. Every field changes the result, so resuming requires equality.

    The defaults (f = 8, c = 8, EK-FAC in the projected space, raw factors, λ = 0.1·tr/D,
    int8 rows) were chosen on the measured quality-vs-storage frontier at or under the bytes
    of LoGRA rank 16: within 0.013 LDS of the best point there (f = 4, c = 4) at half its
    scan FLOPs (docs/benchmarks.md). The paper's configuration is
    ``IndexConfig(factor_rank=1, curvature="factors", damping="trace", dtype="bfloat16")``.
    """

    projection_factor: int | None = field(
        default=8,
        metadata=_help("f in d1 = ⌊I/f⌋, d2 = ⌊O/f⌋ (ignored when --d1/--d2 are given)"),
    )
    d1: int | None = field(
        default=None, metadata=_help("explicit input-side projection width for every layer")
    )
    d2: int | None = field(
        default=None, metadata=_help("explicit output-side projection width for every layer")
    )
    factor_rank: int = field(
        default=8, metadata=_help("c: components stored per example per layer (≤ min(d1, d2))")
    )
    dense: bool = field(
        default=False, metadata=_help("store the projected gradient itself (LoGRA-dense baseline)")
    )
    curvature: str = field(
        default="ekfac",
        metadata=_help(
            "factors: Woodbury subspace of the stored factors (the paper's); gradients: the "
            "same, sketched from the dense gradients in the factor pass; kfac / ekfac: "
            "Kronecker curvature in the projected space",
            choices=CURVATURE_KINDS,
        ),
    )
    factor_metric: str = field(
        default="raw",
        metadata=_help(
            "raw: best rank-c factors of G; whitened: of the curvature-whitened G "
            "(kfac / ekfac only)",
            choices=FACTOR_METRICS,
        ),
    )
    covariance_sample: int = field(
        default=2048,
        metadata=_help(
            "kfac / ekfac: examples (evenly spaced) in the pre-pass that fits the Kronecker "
            "factors; all examples when N is smaller"
        ),
    )
    curvature_rank: int = field(
        default=64, metadata=_help("r: eigenpairs kept per layer (≤ D; factors curvature)")
    )
    oversample: int = field(default=10, metadata=_help("p: oversampling of the eigensolver"))
    power_iters: int = field(default=3, metadata=_help("q: power iterations of the eigensolver"))
    damping: str | float = field(
        default="trace:0.1",
        metadata=_help(
            "λ: trace (0.5·tr/D), trace:K (K·tr/D), paper (0.1·mean top r+p eigenvalues) "
            "or a number"
        ),
    )
    layers: tuple[str, ...] = field(
        default_factory=tuple,
        metadata=_help("shell globs over module names; default: every linear inside the blocks"),
    )
    dtype: str = field(
        default="int8",
        metadata=_help(
            "factor storage: bfloat16 | float16 | float32 | int8 (a float32 scale per layer "
            "side per example; half the bytes of bfloat16)"
        ),
    )
    precision: str = field(
        default="float32",
        metadata=_help("dtype the model and the gradient math run in", choices=PRECISIONS),
    )
    batch_size: int = field(default=16, metadata=_help("examples per forward/backward"))
    max_tokens: int = field(
        default=128, metadata=_help("documents are cut into chunks of at most this many tokens")
    )
    seed: int = field(default=0, metadata=_help("seeds projections and the eigensolver"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N"))
    checkpoint_rows: int = field(
        default=1024, metadata=_help("flush and journal progress at least every this many rows")
    )
    on_bad_record: str = field(
        default="skip",
        metadata=_help("skip (report and continue) or fail", choices=BAD_RECORD_POLICIES),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", storage_dtype_name(self.dtype))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.d1 is not None:  # explicit widths: the factor plays no part
            object.__setattr__(self, "projection_factor", None)
        object.__setattr__(self, "damping", _damping(self.damping))
        for problem in self._problems():
            raise ConfigError(problem)

    def _problems(self) -> list[str]:
        positive = ["factor_rank", "curvature_rank", "batch_size", "max_tokens", "checkpoint_rows"]
        positive.append("covariance_sample")
        problems = [
            f"{name} must be ≥ 1, got {getattr(self, name)}"
            for name in positive
            if int(getattr(self, name)) < 1
        ]
        if self.max_tokens < 2:
            problems.append("max_tokens must be ≥ 2 (one token of context, one predicted)")
        if self.oversample < 0 or self.power_iters < 0:
            problems.append("oversample and power_iters must be ≥ 0")
        if (self.d1 is None) != (self.d2 is None):
            problems.append("give both d1 and d2, or neither")
        if self.d1 is None and (self.projection_factor is None or self.projection_factor < 1):
            problems.append("projection_factor must be ≥ 1 when d1/d2 are not given")
        if self.d1 is not None and (self.d1 < 1 or (self.d2 or 0) < 1):
            problems.append("d1 and d2 must be ≥ 1")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.curvature not in CURVATURE_KINDS:
            problems.append(f"curvature must be one of {CURVATURE_KINDS}, got {self.curvature!r}")
        if self.factor_metric not in FACTOR_METRICS:
            problems.append(f"factor_metric must be one of {FACTOR_METRICS}")
        if self.factor_metric == "whitened" and self.curvature not in ("kfac", "ekfac"):
            problems.append("factor_metric 'whitened' needs a Kronecker curvature (kfac or ekfac)")
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            problems.append(f"on_bad_record must be 'skip' or 'fail', got {self.on_bad_record!r}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}")
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


def _damping(value: str | float) -> str | float:
    """A rule stays a rule (``trace``, ``trace:K``, ``paper``); anything else is a number > 0."""
    if isinstance(value, str) and parse_damping(value) is not None:
        return value
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"damping must be one of {DAMPING_RULES}, trace:K or a positive number, got {value!r}"
        ) from None
    if not number > 0:
        raise ConfigError(f"damping must be positive, got {number}")
    return number


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name: saved → current' for every field that differs (for resume/serve refusals)."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{key}: {saved.get(key)!r} → {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]
