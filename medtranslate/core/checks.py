"""Checks of user-given values (config keys, command-line options): type and range, with a bounded message.

Every check names the setting and shows the bad value in at most SHOW_MAX characters, whatever its size: a value read
from a hostile file cannot make an error message exhaust memory. The error class is the caller's choice
(``ConfigError`` for config keys, ``InputError`` for options).
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any

from medtranslate.core.errors import ConfigError, InputError, MedTranslateError

__all__ = ["show", "require_int", "require_number", "require_choice", "require_bool", "require_text", "require_exists"]

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 40, 40, 4, 4, 3
SHOW_MAX = 120


def show(value: Any) -> str:
    """``repr`` of a user-given value, at most SHOW_MAX characters whatever its size or nesting."""
    text = _repr.repr(value)
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 3] + "..."


# ----------------------------------------------------------------------------------------------------- value checks


def _fail(error: type[MedTranslateError], name: str, expected: str, value: Any) -> MedTranslateError:
    return error(f"{name} must be {expected}, got {show(value)}")


def require_int(
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[MedTranslateError] = ConfigError,
) -> int:
    """``value`` as a whole number in [minimum, maximum] (booleans and fractions are refused)."""
    bounds = _bounds_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(error, name, "a whole number" + bounds, value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(error, name, "a whole number" + bounds, value)
    return value


def require_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    error: type[MedTranslateError] = ConfigError,
) -> float:
    """``value`` as a finite number; ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive."""
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    if below is not None:
        parts.append(f"< {below:g}")
    expected = "a finite number" + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(error, name, expected, value)
    v = float(value)
    if (
        not math.isfinite(v)
        or (minimum is not None and v < minimum)
        or (maximum is not None and v > maximum)
        or (above is not None and v <= above)
        or (below is not None and v >= below)
    ):
        raise _fail(error, name, expected, value)
    return v


def require_choice(
    name: str, value: Any, options: tuple[Any, ...], error: type[MedTranslateError] = ConfigError
) -> Any:
    if not isinstance(value, (str, int, type(None))) or isinstance(value, bool) or value not in options:
        raise error(f"unknown {name} {show(value)}; expected one of: {', '.join(map(str, options))}")
    return value


def require_bool(name: str, value: Any, error: type[MedTranslateError] = ConfigError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {show(value)}")
    return value


def require_exists(path: str | Path, flag: str = "the path") -> Path:
    """The path, which must exist; else an InputError naming it and the option (``flag``) that gave it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check {flag}")
    return path


def require_text(name: str, value: Any, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be " + ("a path or null" if allow_none else "a path") + f", got {show(value)}")
    return value


def _bounds_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
