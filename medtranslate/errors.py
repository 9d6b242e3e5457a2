"""Project exceptions. Every message names the file (or setting) and says what to do."""

from __future__ import annotations

__all__ = [
    "MedTranslateError",
    "InputError",
    "GeometryMismatchError",
    "ConfigError",
    "CheckpointError",
    "OutputError",
]


class MedTranslateError(Exception):
    """Base class: the CLI prints these on one line and exits with status 2."""


class InputError(MedTranslateError):
    """An input file or folder cannot be used as given."""


class GeometryMismatchError(MedTranslateError):
    """Two volumes that must share a voxel grid do not."""


class ConfigError(MedTranslateError):
    """An experiment configuration is invalid."""


class CheckpointError(MedTranslateError):
    """A checkpoint cannot be loaded safely or does not fit the request."""


class OutputError(MedTranslateError):
    """An output location cannot be written safely."""
