"""The root of every error the project raises on purpose.

Entry points (the indexer CLI, the server's start-up, the client CLI) catch
``LorifError`` once and print its message; anything else is a bug and keeps its traceback.
This module imports nothing, so the client can share it without the heavy dependencies.
"""

from __future__ import annotations


class LorifError(Exception):
    """Something the user can fix: the message says what and, where it can, how."""


class ConfigError(LorifError, ValueError):
    """A setting is out of range or inconsistent with another."""


class DataError(LorifError):
    """Training data that cannot be read, or a bad record when ``on_bad_record='fail'``."""


class ModelError(LorifError):
    """The model or tokenizer cannot be loaded from the given path."""


class IndexFileError(LorifError):
    """The index file is missing, corrupt, truncated or of another format or version."""


class BuildError(LorifError):
    """The build cannot proceed (a resume with other settings, a full disk, …)."""


class DifferentBuildError(BuildError):
    """The output (or its partial) exists from a build with other settings, model or data."""


class StartupError(LorifError):
    """The server cannot serve this index with this model; the message says why."""
