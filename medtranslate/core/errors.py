"""Project exceptions. Every message names the file (or setting) and says what to do."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = [
    "MedTranslateError",
    "InputError",
    "GeometryMismatchError",
    "ConfigError",
    "CheckpointError",
    "OutputError",
    "native_call",
    "native_messages",
]

T = TypeVar("T")


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


_NATIVE_LIMIT = 4096  # bytes of a C library's messages kept for one call


@contextlib.contextmanager
def native_messages() -> Iterator[list[str]]:
    """What C libraries (ITK, GDCM, MetaIO) print on the process's stderr while the block runs, caught instead of
    reaching the terminal with no file named: the list yielded holds the lines once the block has ended, for the
    caller to log or quote with the file's name. Where stderr cannot be redirected, the block runs as it is."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield lines
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read(_NATIVE_LIMIT).decode("utf-8", errors="replace")
                lines.extend(" ".join(line.split()) for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)


def native_call(call: Callable[[], T], where: object, log: logging.Logger) -> T:
    """``call()`` (a SimpleITK read) with what the C libraries print caught (:func:`native_messages`).

    On success their lines are logged as warnings naming ``where``. A RuntimeError is raised again as one whose text
    is the error's last line and the libraries' first two lines, on one line, for the caller's one-line message.
    """
    with native_messages() as said:
        try:
            result = call()
        except RuntimeError as exc:
            error = exc
        else:
            error = None
    if error is not None:
        text = str(error).strip()
        last = " ".join(text.splitlines()[-1].split())[:200] if text else type(error).__name__
        raise RuntimeError("; ".join([last, *said[:2]])) from error
    for line in said:
        log.warning("%s: %s", where, line)
    return result
