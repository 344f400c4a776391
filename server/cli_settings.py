"""Settings from flags, ``.env`` and the environment, with one clear line per mistake.

pydantic-settings generates the flags from the settings fields; this module only turns its
validation errors into messages a person reads ("--index (or LORIF_INDEX) is required").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp

from lorif_serve.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


def settings_from_cli(cls: type[S], argv: Sequence[str] | None) -> S:
    """Parse ``argv`` (flags win over the environment and ``.env``, which win over defaults).

    Raises:
        ConfigError: naming each bad or missing setting by its flag and variable.
        SystemExit: for ``--help`` and unknown flags (argparse's own behaviour).
    """
    try:
        return CliApp.run(cls, cli_args=list(argv) if argv is not None else None)
    except ValidationError as exc:
        raise ConfigError(describe(exc, str(cls.model_config.get("env_prefix", "")))) from None


def describe(exc: ValidationError, env_prefix: str) -> str:
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        flag = "--" + field.replace("_", "-")
        where = f"{flag} (or {env_prefix}{field.upper()})"
        if error["type"] == "missing":
            lines.append(f"{where} is required")
        else:
            lines.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(lines)
