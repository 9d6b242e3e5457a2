"""The batch runner shared by translate and simulate-lowdose: skip, record, go on, attribute outputs correctly."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys

import pytest

from medtranslate.core.atomic import atomic_write_text
from medtranslate.core.errors import InputError, OutputError
from medtranslate.io.cases import Case
from medtranslate.runtime.batch import prepare_output_folder, read_manifest, run_cases, summary_line


def _cases(tmp_path, n=3):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    cases = []
    for i in range(n):
        path = folder / f"c{i}.nii.gz"
        path.write_bytes(b"x")
        cases.append(Case(f"c{i}", path))
    return cases


def _outputs(out):
    return lambda case: [out / f"{case.case_id}.txt"]


def _work(bad=()):
    def work(case, targets):
        if case.case_id in bad:
            raise bad[case.case_id]
        atomic_write_text(targets[0], case.case_id)

    return work


def test_a_failing_case_of_any_kind_is_recorded_and_the_rest_are_done(tmp_path, caplog):
    cases, out = _cases(tmp_path, 4), tmp_path / "out"
    bad = {"c1": InputError("c1.nii.gz: unreadable; re-export it"), "c2": ZeroDivisionError("division by zero")}
    rows = run_cases(cases, out / "manifest.csv", _outputs(out), _work(bad), progress=False)
    assert [r["status"] for r in rows] == ["done", "failed", "failed", "done"]
    assert rows[1]["error"] == "c1.nii.gz: unreadable; re-export it"
    assert "unexpected ZeroDivisionError (division by zero)" in rows[2]["error"] and "c2.nii.gz" in rows[2]["error"]
    assert summary_line(rows, out) == (f"2 done, 0 skipped, 2 failed; outputs in {out}", 1)
    assert [r["status"] for r in read_manifest(out / "manifest.csv")] == ["done", "failed", "failed", "done"]


def test_outputs_made_with_other_settings_are_refused_and_keep_their_attribution(tmp_path, caplog):
    cases, out = _cases(tmp_path), tmp_path / "out"
    manifest = out / "manifest.csv"
    run_cases(cases[:2], manifest, _outputs(out), _work(), progress=False, extra={"checkpoint_sha256": "aaaa"})
    again = run_cases(cases, manifest, _outputs(out), _work(), progress=False, extra={"checkpoint_sha256": "aaaa"})
    assert [r["status"] for r in again] == ["skipped", "skipped", "done"]  # the same settings: nothing redone
    with caplog.at_level(logging.WARNING):
        rows = run_cases(
            cases, manifest, _outputs(out), _work(), progress=False, extra={"checkpoint_sha256": "bbbb", "tta": True}
        )
    assert [(r["status"], r["checkpoint_sha256"]) for r in rows] == [
        ("refused", "aaaa"),
        ("refused", "aaaa"),
        ("refused", "aaaa"),
    ]
    assert "made with other settings (checkpoint_sha256 aaaa, not bbbb; tta unknown, not True)" in rows[0]["error"]
    assert "pass --overwrite" in caplog.text
    assert summary_line(rows, out) == (
        f"0 done, 0 skipped, 0 failed, 3 refused (made with other settings); outputs in {out}",
        1,
    )
    saved = {r["case"]: r["checkpoint_sha256"] for r in csv.DictReader(manifest.open())}
    assert saved == {"c0": "aaaa", "c1": "aaaa", "c2": "aaaa"}
    # outputs that no manifest row explains are not credited to this run either
    manifest.unlink()
    rows = run_cases(cases, manifest, _outputs(out), _work(), progress=False, extra={"checkpoint_sha256": "cccc"})
    assert {(r["status"], r["checkpoint_sha256"]) for r in rows} == {("skipped", "unknown")}
    rows = run_cases(
        cases, manifest, _outputs(out), _work(), overwrite=True, progress=False, extra={"checkpoint_sha256": "cccc"}
    )
    assert {(r["status"], r["checkpoint_sha256"]) for r in rows} == {("done", "cccc")}


def test_a_second_process_on_the_same_manifest_is_refused_while_the_first_runs(tmp_path):
    """Two batches into one folder would credit one's outputs to the other in a shared manifest: the second is
    refused at once (the lock is the kernel's, so it ends with the process however it ends)."""
    cases, out = _cases(tmp_path), tmp_path / "out"
    seen = []

    def work(case, targets):
        if not seen:  # while the first batch runs, a second one (another process in life) tries the same manifest
            child = subprocess.run(
                [sys.executable, "-c", SECOND_BATCH, str(out / "manifest.csv")], capture_output=True, text=True
            )
            seen.append(child)
        atomic_write_text(targets[0], case.case_id)

    rows = run_cases(cases, out / "manifest.csv", _outputs(out), work, progress=False)
    assert [r["status"] for r in rows] == ["done"] * 3
    assert seen[0].returncode == 3, seen[0].stderr
    assert f"medtranslate process {os.getpid()}" in seen[0].stdout and "is writing into this folder" in seen[0].stdout
    child = subprocess.run([sys.executable, "-c", SECOND_BATCH, str(out / "manifest.csv")], capture_output=True)
    assert child.returncode == 0  # once the first has ended, the folder is free again


SECOND_BATCH = """
import sys
from pathlib import Path
from medtranslate.runtime.batch import run_cases
from medtranslate.core.errors import OutputError
try:
    run_cases([], Path(sys.argv[1]), lambda c: [], lambda c, t: None, progress=False)
except OutputError as exc:
    print(exc)
    sys.exit(3)
"""


def test_output_folder_checks(tmp_path):
    cases = _cases(tmp_path)
    with pytest.raises(OutputError, match="output folder is the input folder"):
        prepare_output_folder(tmp_path / "in", tmp_path / "in")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_output_folder(cases[0].path, tmp_path / "afile")
    with pytest.raises(OutputError, match="not writable"):
        prepare_output_folder(cases[0].path, tmp_path / "afile" / "sub")
    with pytest.raises(OutputError, match="is inside the input folder .* would take these outputs for inputs"):
        prepare_output_folder(tmp_path / "in", tmp_path / "in" / "sct")  # poisoned later runs on the input
    assert not (tmp_path / "in" / "sct").exists()
    prepare_output_folder(cases[0].path, tmp_path / "new" / "out")
    assert (tmp_path / "new" / "out").is_dir() and list((tmp_path / "new" / "out").iterdir()) == []


def test_an_unreadable_manifest_is_an_error_not_a_crash(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OutputError, match="manifest of an earlier run cannot be read"):
        run_cases(_cases(tmp_path), out / "manifest.csv", _outputs(out), _work(), progress=False)
