"""Atomic outputs: every file or folder medtranslate writes appears whole or not at all.

:func:`atomic_output` hands the writer a hidden temporary name beside the target
(``.<stem>.partial-<host>-<pid><suffix>``), then flushes it to disk and renames it into place. Whatever goes wrong
(a full disk, a read-only folder, an exception or Ctrl-C in the writer), the temporary file is removed without
raising a second error, and an ``OSError`` becomes one :class:`~medtranslate.errors.OutputError` naming the target.

The temporary name carries the host and process id, so :func:`remove_stale_partials` removes only what a process
that no longer runs left behind: two shards writing into one folder never delete each other's work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

from .errors import OutputError

__all__ = [
    "atomic_output",
    "atomic_write_text",
    "atomic_copy",
    "partial_name",
    "remove_stale_partials",
    "output_error",
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


def partial_name(path: Path) -> Path:
    """The hidden temporary name of ``path`` for this process; it keeps the suffix writers choose formats by."""
    stem, suffix = _split_suffix(path.name)
    return path.with_name(f".{stem}.partial-{_HOST}-{os.getpid()}{suffix}")


def output_error(path: Path, exc: OSError) -> OutputError:
    """One-line error for a failed write of ``path``, with what to do about it."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        fix = "free some space or choose an output on another disk"
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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, directory: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Write ``path`` under a temporary name and rename it into place when the block ends without error.

    Args:
        path: the file (or folder) to produce.
        directory: the output is a folder; the temporary folder is created for the writer.
        overwrite: replace an existing output; without it an existing output is an :class:`OutputError`.

    Yields:
        The temporary path to write to.

    Raises:
        OutputError: the output exists (without ``overwrite``) or cannot be written; nothing is left behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
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
            old = path.with_name(f".{path.name}.old-{_HOST}-{os.getpid()}")
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
