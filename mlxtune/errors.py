"""The errors mlxtune raises on purpose.

Every message is written for the user: one line saying what went wrong and,
where there is one, what to do about it. ``mlxtune.cli`` prints ``Error: <message>``
and exits with ``exit_code``; anything else that escapes is a bug.
"""

from __future__ import annotations

from pathlib import Path


class MlxtuneError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1
    label = "Error"  # how the CLI introduces the message


class UsageError(MlxtuneError):
    """The command was called with options that cannot work together."""

    exit_code = 2


class ConfigError(MlxtuneError):
    """A configuration file or option value is invalid."""


class ModelNotFoundError(MlxtuneError):
    """The model path, Hub id or file does not exist."""


class HubUnavailableError(MlxtuneError):
    """The Hugging Face Hub cannot be reached and the model is not cached."""


class ModelFormatError(MlxtuneError):
    """A model file is damaged, truncated, or of a kind mlxtune cannot read."""


class UnsupportedModelError(ModelFormatError):
    """A readable model of an architecture or tensor type mlxtune does not support."""


class OutputExistsError(MlxtuneError):
    """The output directory already holds something we would overwrite."""


class AdapterError(MlxtuneError):
    """An adapter directory is missing, incomplete, or does not fit the model."""


class DataError(MlxtuneError):
    """A data file is invalid. Names the file, and where known the line and field."""

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ):
        self.path = None if path is None else str(path)
        self.line = line  # the line, or with unit "row" the row (Parquet, Arrow)
        self.field = field
        self.reason = message
        self.unit = unit
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}" if unit == "line" else f"{self.path}, {unit} {line}"
        if field is not None:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)
