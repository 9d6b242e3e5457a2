"""Batch safety shared by every command that writes one output set per case.

A case whose outputs all exist is skipped (unless ``overwrite``); one failing case is recorded and the rest go on,
whatever the failure (a bad input raises a MedTranslateError with its own message; anything else is recorded with its
type, never allowed to end the batch); the manifest is rewritten atomically after every case, so a batch killed at
any moment resumes where it stopped and its manifest is never half written. Rows of cases outside this run (another
input or shard) are kept. A skipped case keeps the attribution of the run that made it (e.g. the checkpoint's
sha256): the manifest never credits an output to a model that did not make it, and a case whose outputs were made
with other settings is refused, not passed off as this run's. One process at a time writes a manifest.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from medtranslate.core.atomic import atomic_write_csv, remove_stale_partials
from medtranslate.core.errors import MedTranslateError, OutputError
from medtranslate.io.cases import Case

__all__ = ["prepare_output_folder", "run_cases", "read_manifest"]

logger = logging.getLogger(__name__)


def prepare_output_folder(inp: Path | list[Path], out: Path, flag: str = "--output") -> None:
    """Refuse an input folder (or any of several) as output, check the output is writable, remove partial files of
    dead processes; ``flag`` is the option that names the output, for the messages."""
    for one in inp if isinstance(inp, list) else [inp]:
        src = one.resolve() if one.is_dir() else one.resolve().parent
        if out.resolve() == src:
            raise OutputError(
                f"{out}: the output folder is the input folder; choose another {flag} so inputs are never touched"
            )
        if src in out.resolve().parents and one.is_dir():
            raise OutputError(
                f"{out}: the output folder is inside the input folder {one}, so a later run on {one} would take these "
                f"outputs for inputs; choose an {flag} outside it"
            )
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder; choose a folder for {flag}")
    probe = out / f".write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as exc:
        raise OutputError(
            f"{out}: output folder is not writable ({exc.strerror or exc}); choose another {flag}"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    for stale in remove_stale_partials(out):  # left by a killed run; never a finished output, never another shard's
        logger.debug("removed %s, left by a process that no longer runs", stale)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OutputError(
            f"{path}: the manifest of an earlier run cannot be read ({type(exc).__name__}); move it away and run again"
        ) from exc


def _write_manifest(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    atomic_write_csv(path, rows, columns)


def merge_manifests(parts: list[Path], merged: Path) -> Path:
    """One manifest from the per-shard ones (rows in case order, columns in first-seen order); the parts stay."""
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    for part in parts:
        for row in read_manifest(part):
            rows.append(row)
            columns += [c for c in row if c not in columns]
    _write_manifest(merged, sorted(rows, key=lambda r: r.get("case", "")), columns)
    return merged


@contextlib.contextmanager
def manifest_lock(manifest: Path) -> Iterator[None]:
    """Hold ``manifest`` for this process: a second process that would write the same manifest (the same folder and
    shard) is refused at once, naming the one that holds it. The lock is the kernel's (``flock``), so it ends with the
    process however it ends; its hidden file is removed when the batch ends (one left by a killed process is reused).
    """
    lock = manifest.with_name(f".{manifest.name}.lock")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OutputError(
                f"{manifest.parent}: {holder} is writing into this folder ({manifest.name}); wait until it ends, or "
                "choose another output folder"
            ) from None
        try:  # the file may have been removed by the holder that just ended: lock the file that is there now
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"medtranslate process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a process waiting on this file sees it gone and takes a new one
        os.close(fd)


def run_cases(
    cases: Iterable[Case],
    manifest: Path,
    outputs: Callable[[Case], list[Path]],
    work: Callable[[Case, list[Path]], None],
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    desc: str = "cases",
) -> list[dict[str, Any]]:
    """Run ``work(case, outputs)`` for every case; returns the manifest rows of this run.

    ``work`` must write each output atomically (temporary name, then rename) and raise a MedTranslateError for bad
    input. ``extra`` holds columns that attribute the outputs (checkpoint hash, options that change the voxels, dose,
    ...). A case whose outputs exist is skipped when the run that made them had the same ``extra``; when they were made
    with other values it is ``refused`` (kept as it is, its row keeps what made it, the error names the value that
    differs; ``overwrite`` redoes it), so a folder never mixes, unannounced, outputs of different settings. One
    process at a time writes a manifest (:func:`manifest_lock`).
    """
    from tqdm import tqdm

    cases = list(cases)
    extra = {k: str(v) for k, v in (extra or {}).items()}
    columns = ["case", "input", "output", "status", "error", "seconds", *extra]
    ids = {c.case_id for c in cases}
    with manifest_lock(manifest):
        previous = read_manifest(manifest)
        made_by = {r.get("case"): r for r in previous if r.get("status") in ("done", "skipped", "refused")}
        earlier = [r for r in previous if r.get("case") not in ids]
        rows: list[dict[str, Any]] = []
        for case in tqdm(cases, desc=desc, unit="case", disable=not progress):
            targets = outputs(case)
            row = {
                "case": case.case_id,
                "input": case.label,
                "output": ";".join(str(t) for t in targets),
                "status": "",
                "error": "",
                "seconds": 0.0,
                **extra,
            }
            t0 = time.perf_counter()
            if all(t.exists() for t in targets) and not overwrite:
                kept, differ = _attribution(case.case_id, made_by.get(case.case_id), extra)
                row.update(kept, status="refused" if differ else "skipped", error=differ)
                if differ:
                    logger.warning("%s", differ)
            else:
                try:
                    work(case, targets)
                    row["status"] = "done"
                except MedTranslateError as exc:
                    row.update(status="failed", error=str(exc))
                    logger.warning("%s", exc)
                except Exception as exc:  # a defect, not bad input: record it, keep the batch going
                    reason = f"{type(exc).__name__} ({str(exc)[:200]})"
                    message = f"{case.label}: unexpected {reason}; please report this with the file"
                    row.update(status="failed", error=message)
                    logger.warning("%s", message)
                    logger.debug("traceback of case %s", case.case_id, exc_info=True)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            _write_manifest(manifest, earlier + rows, columns)
        if not cases:
            _write_manifest(manifest, earlier, columns)
    return rows


def _attribution(case_id: str, before: dict[str, Any] | None, extra: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The extra columns of a case whose outputs exist (those of the run that made them, not this run's), and why it
    is refused ("" when it is not: the same values, or none recorded)."""
    if before is None:
        if extra:
            logger.warning(
                "case %s: skipped, its outputs exist but no manifest row says what made them; pass --overwrite to "
                "redo it",
                case_id,
            )
        return {k: "unknown" for k in extra}, ""
    kept = {k: before.get(k, "unknown") for k in extra}
    differ = [k for k in extra if str(kept[k]) != extra[k]]
    if not differ:
        return kept, ""
    shown = "; ".join(f"{k} {str(kept[k])[:24]}, not {extra[k][:24]}" for k in differ)
    return kept, (
        f"case {case_id}: its outputs exist, made with other settings ({shown}); kept as they are: pass --overwrite "
        "to redo it with these settings, or choose another output folder"
    )


def summary_line(rows: list[dict[str, Any]], out: Path) -> tuple[str, int]:
    """'N done, N skipped, N failed; outputs in OUT' (and N refused, when any) and the exit status (1 if any failed or
    was refused)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "refused")}
    refused = f", {counts['refused']} refused (made with other settings)" if counts["refused"] else ""
    return (
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed{refused}; outputs in {out}",
        1 if counts["failed"] or counts["refused"] else 0,
    )
