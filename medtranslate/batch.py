"""Batch safety shared by every command that writes one output set per case.

A case whose outputs all exist is skipped (unless ``overwrite``); one failing case is recorded and the rest go on;
the manifest is rewritten atomically after every case, so a batch killed at any moment resumes where it stopped and
its manifest is never half written. Rows of cases outside this run (another input or shard) are kept.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import MedTranslateError, OutputError
from .io import Case

__all__ = ["prepare_output_folder", "run_cases", "read_manifest"]

logger = logging.getLogger(__name__)


def prepare_output_folder(inp: Path, out: Path) -> None:
    """Refuse the input folder as output, check the output is writable, remove partial files of killed runs."""
    src = inp.resolve() if inp.is_dir() else inp.resolve().parent
    if out.resolve() == src:
        raise OutputError(f"{out}: the output folder is the input folder; choose another --output so inputs are never touched")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{out}: output folder is not writable ({exc.strerror or exc}); choose another --output") from exc
    for stale in out.glob(".*.partial-*"):  # left by a killed run; never a finished output
        if stale.is_dir():
            import shutil

            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    from .io import atomic_write_text

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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

    ``work`` must write each output atomically (temporary name, then rename) and raise a MedTranslateError for bad input.
    """
    from tqdm import tqdm

    cases = list(cases)
    extra = extra or {}
    columns = ["case", "input", "output", "status", "error", "seconds", *extra]
    ids = {c.case_id for c in cases}
    earlier = [r for r in read_manifest(manifest) if r.get("case") not in ids]
    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc=desc, unit="case", disable=not progress):
        targets = outputs(case)
        row = {"case": case.case_id, "input": case.label, "output": ";".join(str(t) for t in targets), "status": "", "error": "", "seconds": 0.0, **extra}
        t0 = time.perf_counter()
        if all(t.exists() for t in targets) and not overwrite:
            row["status"] = "skipped"
        else:
            try:
                work(case, targets)
                row["status"] = "done"
            except MedTranslateError as exc:
                row.update(status="failed", error=str(exc))
                logger.warning("%s", exc)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        _write_manifest(manifest, earlier + rows, columns)
    if not cases:
        _write_manifest(manifest, earlier, columns)
    return rows


def summary_line(rows: list[dict[str, Any]], out: Path) -> tuple[str, int]:
    """'N done, N skipped, N failed; outputs in OUT' and the exit status (1 if any failed)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    return f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; outputs in {out}", 1 if counts["failed"] else 0
