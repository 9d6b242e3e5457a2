"""Atomic outputs: every file or folder medtranslate writes appears whole or not at all.

:func:`atomic_output` hands the writer a hidden temporary name beside the target
(``.<stem>.partial-<host>-<pid><suffix>``), then flushes it to disk and renames it into place. Whatever goes wrong
(a full disk, a read-only folder, an exception or Ctrl-C in the writer), the temporary file is removed without
raising a second error, and an ``OSError`` becomes one :class:`~medtranslate.core.errors.OutputError` naming the target.

The temporary name carries the host and process id, so :func:`remove_stale_partials` removes only what a process
that no longer runs left behind: two shards writing into one folder never delete each other's work.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import hashlib
import io
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtranslate.core.errors import OutputError

__all__ = [
    "atomic_output",
    "atomic_write_text",
    "atomic_write_csv",
    "atomic_copy",
    "partial_name",
    "remove_stale_partials",
    "output_error",
    "OwnFolder",
    "check_own_folder",
]

MULTI_SUFFIXES = (".nii.gz",)
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"
_PARTIAL = re.compile(r"^\..*\.partial-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)(\.[^/]*)?$")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems


def partial_name(path: Path) -> Path:
    """The hidden temporary name of ``path`` for this process; it keeps the suffix writers choose formats by.

    A long name (a case id of 230 characters) is shortened, with a hash of the whole, so that the temporary name fits
    the file system's limit wherever the final name does.
    """
    stem, suffix = _split_suffix(path.name)
    return path.with_name(_hidden(stem, f".partial-{_HOST}-{os.getpid()}{suffix}"))


def _hidden(stem: str, tail: str) -> str:
    """``.<stem><tail>``, the stem shortened (with a hash of it) when the whole would exceed NAME_MAX bytes."""
    room = NAME_MAX - len(tail.encode()) - 1
    if len(stem.encode()) > room:
        digest = hashlib.sha256(stem.encode()).hexdigest()[:12]
        stem = stem.encode()[: room - 13].decode("utf-8", "ignore") + "~" + digest
    return f".{stem}{tail}"


def output_error(path: Path, exc: OSError) -> OutputError:
    """One-line error for a failed write of ``path``, with what to do about it."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        fix = "free some space or choose an output on another disk"
    elif exc.errno == errno.ENAMETOOLONG:
        fix = f"its name is too long for the file system ({len(path.name.encode())} bytes); shorten the input's name"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose an output folder you can write to"
    else:
        fix = "check that the folder exists and is writable"
    return OutputError(f"{path}: cannot write ({reason}); nothing was left half-written; {fix}")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file, or every file of a folder, to disk before the rename makes it visible."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class OwnFolder:
    """What a folder this command wrote looks like, so that replacing it can never remove anything else.

    Attributes:
        marker: a file (relative path) every such folder holds, e.g. ``preprocess.json``.
        files: patterns (``fnmatch``, on paths relative to the folder, ``/``-separated) that every file in it matches.
        what: how to name such a folder in a message (e.g. "a preprocessed case").
    """

    marker: str
    files: tuple[str, ...]
    what: str


def _matches(rel: str, pattern: str) -> bool:
    """``fnmatch`` at the same depth: "*.nii.gz" matches "ct.nii.gz" but not "mine/ct.nii.gz"."""
    return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)


def check_own_folder(path: Path, own: OwnFolder | None) -> None:
    """Raise unless the existing folder ``path`` is one that ``own`` describes (its marker, nothing else inside).

    Raises:
        OutputError: naming what in the folder was not written by this command; nothing is changed.
    """
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder this command wrote; choose another output")
    if own is None:
        raise OutputError(f"{path}: already exists; choose another name (this command replaces no existing folder)")
    if not (path / own.marker).is_file():
        raise OutputError(
            f"{path}: exists but is not {own.what} (no {own.marker}); it was not written by this command, so it is "
            "not replaced: choose another output"
        )
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path).as_posix()
        if entry.is_symlink() or (entry.is_file() and not any(_matches(rel, p) for p in own.files)):
            raise OutputError(
                f"{path}: holds {rel}, which this command did not write, so the folder is not replaced; move it away "
                "or choose another output"
            )
        if not entry.is_file() and not entry.is_dir():
            raise OutputError(f"{path}: holds {rel}, which is not a regular file; choose another output")


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike, directory: bool = False, overwrite: bool = True, own: OwnFolder | None = None
) -> Iterator[Path]:
    """Write ``path`` under a temporary name and rename it into place when the block ends without error.

    Args:
        path: the file (or folder) to produce.
        directory: the output is a folder; the temporary folder is created for the writer.
        overwrite: replace an existing output; without it an existing output is an :class:`OutputError`.
        own: for a folder, what a folder this command wrote looks like: an existing folder is replaced only when it
            is one (see :func:`check_own_folder`); without ``own`` no existing folder is ever replaced.

    Yields:
        The temporary path to write to.

    Raises:
        OutputError: the output exists (without ``overwrite``, or a folder this command did not write) or cannot be
        written; nothing is left behind.
    """
    path = Path(os.path.abspath(path))  # "." and ".." name the folder they stand for (the partial name needs one)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise output_error(path, exc) from exc
    if exists and (directory or path.is_dir()):  # first: --overwrite is suggested only where it would work
        check_own_folder(path, own if directory else None)
    if exists and not overwrite:
        raise OutputError(f"{path}: already exists; choose another name or pass --overwrite")
    tmp = partial_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_quietly(tmp)
        if directory:
            tmp.mkdir()
        yield tmp
        _fsync(tmp)
        if directory and path.is_dir():  # a folder cannot be renamed over a non-empty one: move the old one aside
            old = path.with_name(_hidden(path.name, f".old-{_HOST}-{os.getpid()}"))
            os.replace(path, old)
            os.replace(tmp, path)
            _remove_quietly(old)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise output_error(path, exc) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (whatever the locale: a C library may switch it to ASCII at run time)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def atomic_write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write rows as CSV atomically: a header of ``columns``, then one line per row (keys not in ``columns`` are
    left out, missing ones left empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` a copy of the file ``source``, atomically: a hard link where the file system has them (no bytes
    copied; ``source`` replaced later by a rename keeps ``path`` as it was), else a byte copy."""
    path = Path(path)
    with atomic_output(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    return path


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove temporary outputs in ``folder`` left by processes of this host that no longer run.

    Partial files of running processes (another shard) and of other hosts (a shared disk) are left alone.
    Returns what was removed.
    """
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else []:
        match = _PARTIAL.match(entry.name) or re.match(r"^\..*\.old-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)$", entry.name)
        if match and match["host"] == _HOST and _process_gone(int(match["pid"])):
            _remove_quietly(entry)
            removed.append(entry)
    return removed
