"""The on-disk slice cache: each training case preprocessed once, read back one slice at a time.

Training reads and preprocesses a case once (:func:`~medtranslate.data.slices.prepare_case`) and writes it here as
``.npy`` arrays of axial slices, ``(Z, X, Y)`` on the RAS grid in [-1, 1] (source and target float32, body mask
uint8), with ``meta.json`` holding the index: case id, the arrays held, slice count, and the body fraction of every
slice. A pair's entry holds source, target and mask on one grid; a cohort's scan
(:func:`~medtranslate.data.slices.prepare_scan`) holds its one image, under its role's slot (source or target), and the
mask made from it. A slice is
contiguous on disk, so reading one (or a 2.5D stack) is one read at an offset known from the array's header (parsed
once, when the entry is opened): the process keeps no volume, and its memory does not grow with the cohort
(``benchmarks/bench_train_memory.py``).

A case lives in a folder named by a hash of what made it: the input files (path and content hash), the
preprocessing settings (task, spacing), the cache format and the package version. A changed file or setting gives
another key, so the case is rebuilt and a stale one is never read. Folders appear whole (written under a temporary
name, then renamed), so a killed run leaves no half-written case behind, and processes sharing a cache can race
without harm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtranslate import __version__
from medtranslate.core.atomic import output_error
from medtranslate.core.config import RunConfig
from medtranslate.core.errors import InputError
from medtranslate.io.cases import Case, Pair, Scan

__all__ = [
    "CACHE_FORMAT",
    "CacheError",
    "CachedCase",
    "cache_key",
    "scan_key",
    "cached_or_rebuilt",
    "open_cached",
    "write_cached",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: meta.json lists the arrays (scans of one role); 2: keyed by file content; 1: by size and time
SLOTS = ("source", "target")


def _file_stamp(case: Case | None) -> list[Any] | None:
    """Path and content hash (SHA-256) of every file behind a case (all files of a DICOM folder).

    The content, not the size and modification time: a file rewritten with its old size and time restored (as backup
    and sync tools do) must not reuse the old entry. Hashing reads each file once, a fraction of what reading it as a
    volume costs (``benchmarks/bench_cache_key.py``).
    """
    if case is None:
        return None
    path = Path(case.path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamps = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                stamps.append([str(f), hashlib.file_digest(fh, "sha256").hexdigest()])
        except OSError as exc:
            raise InputError(f"{f}: cannot be read ({exc.strerror or exc}); check the file's permissions") from exc
    return [case.series_uid, stamps]


def _digest(case_id: str, cfg: RunConfig, files: list[Any], **more: Any) -> str:
    """A hash of a cache entry's inputs: its files' stamps and every setting that changes the cached arrays."""
    what = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "case": case_id,
        "files": files,
        "task": cfg.model.task,
        "spacing": list(cfg.data.spacing) if cfg.data.spacing else None,
        **more,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def cache_key(pair: Pair, cfg: RunConfig) -> str:
    """The name of a pair's folder: its case id and the hash of its input files and settings."""
    files = [_file_stamp(pair.source), _file_stamp(pair.target), _file_stamp(pair.mask)]
    return f"{pair.case_id}-{_digest(pair.case_id, cfg, files)}"


def scan_key(scan: Scan, slot: str, cfg: RunConfig) -> str:
    """The name of a cohort scan's folder: the hash also holds the slot it fills (source or target)."""
    files = [_file_stamp(scan.image), _file_stamp(scan.mask)]
    return f"{scan.case_id}-{slot}-{_digest(scan.case_id, cfg, files, slot=slot)}"


@dataclass(frozen=True)
class CachedCase:
    """One case (or one cohort scan) in the cache: where its arrays are, which it holds, its slice count and the body
    fraction of every axial slice."""

    case_id: str
    folder: Path
    shape: tuple[int, int, int]  # (Z, X, Y)
    body_fraction: np.ndarray
    layout: dict[str, tuple[int, str]]  # per array held: its data's byte offset in its .npy and its dtype

    @property
    def arrays(self) -> tuple[str, ...]:
        """The arrays this entry holds (mask, and source and/or target), as meta.json lists them."""
        return tuple(self.layout)

    def array(self, name: str) -> np.ndarray:
        """The whole ``(Z, X, Y)`` array, memory-mapped (read-only): index it and copy what you need."""
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")

    def slices(self, name: str, zs: list[int] | np.ndarray) -> torch.Tensor:
        """Axial slices ``zs`` of one array as a (len(zs), X, Y) float32 tensor of their own.

        The span of slices from the lowest to the highest z is read in one call at its offset, instead of mapping the
        file per read (which parses the .npy header each time): that mapping was most of a small training crop's
        cost (``benchmarks/bench_loader.py``; docs/benchmarks.md).

        Raises:
            InputError: the entry was damaged after it was opened (a file deleted or cut short while training ran).
        """
        try:
            zs = np.asarray(zs, dtype=np.int64)
            offset, dtype = self.layout[name]
            if zs.size == 0 or zs.min() < 0 or zs.max() >= self.shape[0]:
                raise IndexError(f"slices {zs.tolist()} of {self.shape[0]}")
            lo, hi = int(zs.min()), int(zs.max()) + 1
            per_slice = self.shape[1] * self.shape[2] * np.dtype(dtype).itemsize
            with open(self.folder / f"{name}.npy", "rb") as fh:
                fh.seek(offset + lo * per_slice)
                data = fh.read((hi - lo) * per_slice)
            if len(data) != (hi - lo) * per_slice:
                raise EOFError(f"{len(data)} of {(hi - lo) * per_slice} bytes")
            span = np.frombuffer(data, dtype=dtype).reshape(hi - lo, self.shape[1], self.shape[2])
            return torch.from_numpy(span[zs - lo].astype(np.float32))
        except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
            raise InputError(
                f"{self.folder / (name + '.npy')}: this slice cache entry of case '{self.case_id}' was damaged while "
                f"training ran ({type(exc).__name__}: {str(exc)[:120]}); run again (with --resume): a damaged entry "
                "is rebuilt"
            ) from exc


def write_cached(prepared: Any, folder: Path) -> CachedCase:
    """Write a :class:`~medtranslate.data.slices.PreparedCase` (or ``PreparedScan``) as ``folder`` (appears whole or
    not at all): its ``arrays()``, each ``(1, X, Y, Z)``, one of them the body ``mask``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        arrays = {name: a[0].numpy() for name, a in prepared.arrays().items()}
        arrays["mask"] = arrays["mask"].astype(np.uint8)
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a.transpose(2, 0, 1)))
        fraction = arrays["mask"].astype(np.float32).mean(axis=(0, 1))
        meta = {
            "format": CACHE_FORMAT,
            "case_id": prepared.case_id,
            "arrays": sorted(arrays),
            "shape": [int(n) for n in np.moveaxis(arrays["mask"], 2, 0).shape],
            "body_fraction": [round(float(f), 6) for f in fraction],
        }
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            try:  # another process that finished the same case first: its entry serves
                return open_cached(folder)
            except CacheError:
                raise OSError(f"{folder} exists and is damaged") from None
    except OSError as exc:
        raise output_error(folder, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_cached(folder)


class CacheError(Exception):
    """A cache entry that exists but cannot be used (a file missing, truncated or not what meta.json says)."""


def open_cached(folder: Path) -> CachedCase:
    """The cached case in ``folder``, every array checked against its index (present, complete, of its shape).

    Raises:
        FileNotFoundError: there is no entry (not yet written).
        CacheError: the entry is damaged, with the reason.
    """
    if not folder.exists():
        raise FileNotFoundError(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(int(n) for n in meta["shape"])
        fraction = np.asarray(meta["body_fraction"], dtype=np.float32)
        case_id = str(meta["case_id"])
        arrays = tuple(str(a) for a in meta["arrays"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"meta.json unreadable ({type(exc).__name__})") from exc
    if meta.get("format") != CACHE_FORMAT or len(shape) != 3 or fraction.shape != (shape[0],):
        raise CacheError("meta.json is of another format")
    if "mask" not in arrays or not set(arrays) & set(SLOTS) or set(arrays) - {"mask", *SLOTS}:
        raise CacheError(f"meta.json lists arrays {list(arrays)}")
    layout = {}
    for name in arrays:
        try:
            array = np.load(folder / f"{name}.npy", mmap_mode="r")  # reads the header; a short file fails to map
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
            raise CacheError(f"{name}.npy: {getattr(exc, 'strerror', None) or exc}") from exc
        if array.shape != shape:
            raise CacheError(f"{name}.npy holds {array.shape}, meta.json says {shape}")
        if not array.flags.c_contiguous:
            raise CacheError(f"{name}.npy is not stored slice by slice (C order)")
        layout[name] = (int(array.offset), array.dtype.str)
        del array
    return CachedCase(case_id, folder, shape, fraction, layout)


def cached_or_rebuilt(folder: Path, prepare: Callable[[], Any]) -> CachedCase:
    """The entry in ``folder``; written from ``prepare()`` when missing, and rebuilt (with a warning) when damaged.

    A damaged entry is moved aside under a hidden name and removed: it is this cache's own folder (named by its key),
    never a user's file.
    """
    try:
        return open_cached(folder)
    except FileNotFoundError:
        pass
    except CacheError as exc:
        logger.warning("slice cache entry %s is damaged (%s); rebuilding it", folder, exc)
        aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
        try:
            os.replace(folder, aside)
        except OSError as err:
            raise output_error(folder, err) from err
        shutil.rmtree(aside, ignore_errors=True)
    return write_cached(prepare(), folder)
