"""The on-disk slice cache: each training case preprocessed once, read back one slice at a time.

Training reads and preprocesses a case once (:func:`~medtranslate.slices.prepare_case`) and writes it here as
``.npy`` arrays of axial slices, ``(Z, X, Y)`` on the RAS grid in [-1, 1] (source and target float32, body mask
uint8), with ``meta.json`` holding the index: case id, slice count, and the body fraction of every slice. A slice is
contiguous on disk, so reading one (or a 2.5D stack) maps the file, copies those slices and lets the mapping go: the
process keeps no volume, and its memory does not grow with the cohort (``benchmarks/bench_train_memory.py``).

A case lives in a folder named by a hash of what made it: the input files (path, size, modification time), the
preprocessing settings (task, spacing), the cache format and the package version. A changed file or setting gives
another key, so the case is rebuilt and a stale one is never read. Folders appear whole (written under a temporary
name, then renamed), so a killed run leaves no half-written case behind, and processes sharing a cache can race
without harm.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .atomic import output_error
from .cases import Case, Pair
from .config import RunConfig

__all__ = ["CACHE_FORMAT", "CachedCase", "cache_key", "open_cached", "write_cached"]

CACHE_FORMAT = 1
ARRAYS = ("source", "target", "mask")


def _file_stamp(case: Case | None) -> list[Any] | None:
    """Path, size and modification time of every file behind a case (all files of a DICOM folder)."""
    if case is None:
        return None
    path = Path(case.path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamps = []
    for f in files:
        st = f.stat()
        stamps.append([str(f), st.st_size, st.st_mtime_ns])
    return [case.series_uid, stamps]


def cache_key(pair: Pair, cfg: RunConfig) -> str:
    """The hash that names a case's folder: its input files and every setting that changes the cached arrays."""
    what = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "case": pair.case_id,
        "files": [_file_stamp(pair.source), _file_stamp(pair.target), _file_stamp(pair.mask)],
        "task": cfg.model.task,
        "spacing": list(cfg.data.spacing) if cfg.data.spacing else None,
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    return f"{pair.case_id}-{digest}"


@dataclass(frozen=True)
class CachedCase:
    """One case in the cache: where its arrays are, its slice count and the body fraction of every axial slice."""

    case_id: str
    folder: Path
    shape: tuple[int, int, int]  # (Z, X, Y)
    body_fraction: np.ndarray

    def array(self, name: str) -> np.ndarray:
        """The whole ``(Z, X, Y)`` array, memory-mapped (read-only): index it and copy what you need."""
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")

    def slices(self, name: str, zs: list[int] | np.ndarray) -> torch.Tensor:
        """Axial slices ``zs`` of one array as a (len(zs), X, Y) float32 tensor of their own."""
        return torch.from_numpy(np.array(self.array(name)[np.asarray(zs)], dtype=np.float32))


def write_cached(prepared: Any, folder: Path) -> CachedCase:
    """Write a :class:`~medtranslate.slices.PreparedCase` as ``folder`` (appears whole or not at all)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        arrays = {
            "source": prepared.source[0].numpy(),
            "target": prepared.target[0].numpy(),
            "mask": prepared.mask[0].numpy().astype(np.uint8),
        }
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a.transpose(2, 0, 1)))
        fraction = arrays["mask"].astype(np.float32).mean(axis=(0, 1))
        meta = {
            "format": CACHE_FORMAT,
            "case_id": prepared.case_id,
            "shape": [int(n) for n in np.moveaxis(arrays["source"], 2, 0).shape],
            "body_fraction": [round(float(f), 6) for f in fraction],
        }
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another process that finished the same case first
                raise
    except OSError as exc:
        raise output_error(folder, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_cached(folder)


def open_cached(folder: Path) -> CachedCase | None:
    """The cached case in ``folder``, or None when there is none (not yet written, or another format)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or not all((folder / f"{n}.npy").is_file() for n in ARRAYS):
        return None
    return CachedCase(
        str(meta["case_id"]), folder, tuple(meta["shape"]), np.asarray(meta["body_fraction"], dtype=np.float32)
    )
