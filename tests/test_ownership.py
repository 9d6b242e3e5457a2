"""A command deletes only what it wrote: no --overwrite, case id or output path makes one remove a user's folder.

Each test sets up what a careless user could: an output folder that is a case folder, a run folder that holds the
data, a bundle written over a run folder; and checks that every file that was there is still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from medtranslate.cli import main
from medtranslate.core.atomic import atomic_output
from medtranslate.core.errors import ConfigError, InputError, OutputError
from medtranslate.data.phantom import make_subject
from medtranslate.io.cases import Case
from medtranslate.io.files import write_dicom_series, write_nifti
from medtranslate.pipeline import _claim_run_dir
from medtranslate.preprocessing.preprocess import PREPROCESSED_CASE, PreprocessOptions, preprocess_case

from .conftest import SAMPLE, ct_like, oblique_affine


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and its SHA-256: what must be unchanged."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def cases(tmp_path):
    """Two MR/CT cases in the per-subject layout, and a preprocess output folder holding both, done."""
    root = tmp_path / "cases"
    for n in range(2):
        s = make_subject(200 + n, shape=(24, 24, 8), spacing=(6.0, 6.0, 12.0))
        write_nifti(root / f"pt{n}" / "mr.nii.gz", s.mr.array, s.mr.affine)
        write_nifti(root / f"pt{n}" / "ct.nii.gz", s.ct.array, s.ct.affine)
    out = tmp_path / "out"
    assert main(["preprocess", "--input", str(root), "--output", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pt0", "pt1"]
    return root, out


def test_preprocess_from_inside_a_case_folder_keeps_every_case(cases, monkeypatch, capsys):
    """``--input mr.nii.gz`` (or ``--input .``) inside a case folder once gave case id "", whose case folder was the
    output folder itself: it was moved aside and deleted with every finished case in it."""
    root, out = cases
    before = {k: v for k, v in tree(out).items() if k.startswith("pt")}  # the finished cases' folders
    monkeypatch.chdir(root / "pt0")
    assert main(["preprocess", "--input", "mr.nii.gz", "--output", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("0 done, 1 skipped")  # case pt0, done before: skipped
    assert {k: v for k, v in tree(out).items() if k.startswith("pt")} == before
    assert main(["preprocess", "--input", ".", "--output", str(out), "--no-progress", "--overwrite"]) == 0
    assert capsys.readouterr().out.startswith("1 done")  # case pt0 redone in its own folder
    after = tree(out)
    assert {k: v for k, v in after.items() if k.startswith("pt1")} == {
        k: v for k, v in before.items() if k.startswith("pt1")
    }
    assert "pt0/preprocess.json" in after and "manifest.csv" in after


@pytest.mark.parametrize("case_id", ["", ".", "..", "a/b"])
def test_preprocess_case_refuses_a_case_id_that_names_no_folder_of_its_own(cases, case_id):
    """Called from Python (no folder scan made the id), an id like "" would name the output folder itself."""
    root, out = cases
    before = tree(out)
    images = {role: Case(case_id, root / "pt0" / f"{role}.nii.gz", role) for role in ("mr", "ct")}
    with pytest.raises(InputError, match=r"pt0/(mr|ct).nii.gz: no case id can be taken from its name; rename it"):
        preprocess_case(case_id, images, out, PreprocessOptions())
    assert tree(out) == before


def test_a_folder_is_replaced_only_when_it_is_the_commands_own(tmp_path):
    out = tmp_path / "out"
    (out / "pt0").mkdir(parents=True)
    (out / "pt0" / "preprocess.json").write_text("{}")
    (out / "pt0" / "mr.nii.gz").write_bytes(b"x")
    (out / "manifest.csv").write_text("case\n")
    before = tree(out)
    # the output folder itself (a case id that names no folder) holds what preprocess did not write: refused
    with pytest.raises(OutputError, match=r"out: exists but is not a case folder written by preprocess \(no prepr"):
        with atomic_output(out, directory=True, own=PREPROCESSED_CASE):
            pass
    (out / "preprocess.json").write_text("{}")  # even with the marker, what it did not write keeps it
    with pytest.raises(OutputError, match=r"out: holds manifest.csv, which this command did not write"):
        with atomic_output(out, directory=True, own=PREPROCESSED_CASE):
            pass
    (out / "pt0" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"pt0: holds notes.txt, which this command did not write"):
        with atomic_output(out / "pt0", directory=True, own=PREPROCESSED_CASE):
            pass
    (out / "user").mkdir()
    with pytest.raises(OutputError, match=r"user: exists but is not a case folder written by preprocess"):
        with atomic_output(out / "user", directory=True, own=PREPROCESSED_CASE):
            pass
    with pytest.raises(OutputError, match=r"replaces no existing folder"):
        with atomic_output(out / "user", directory=True):
            pass
    with pytest.raises(OutputError, match=r"not a folder this command wrote"):
        with atomic_output(out / "manifest.csv", directory=True, own=PREPROCESSED_CASE):
            pass
    assert {k: v for k, v in tree(out).items() if k in before} == before
    (out / "pt0" / "notes.txt").unlink()
    write_nifti(out / "pt0" / "mine" / "scan.nii.gz", ct_like(shape=(4, 4, 2)), oblique_affine())  # deeper: not its
    with pytest.raises(OutputError, match=r"pt0: holds mine/scan.nii.gz, which this command did not write"):
        with atomic_output(out / "pt0", directory=True, own=PREPROCESSED_CASE):
            pass
    shutil.rmtree(out / "pt0" / "mine")
    with atomic_output(out / "pt0", directory=True, own=PREPROCESSED_CASE) as tmp:  # its own: replaced
        (tmp / "preprocess.json").write_text("{}\n")
    assert sorted(p.name for p in (out / "pt0").iterdir()) == ["preprocess.json"]


def _record(root: Path, epochs: int, **pipeline) -> dict:
    return {
        "data": {"root": str(root), "split": None, "cache": None},
        "model": {"kind": "pix2pix"},
        "train": {"epochs": epochs},
        "pipeline": {"baseline": "none", **pipeline},
    }


def test_run_overwrite_never_removes_the_data_of_the_earlier_run(tmp_path):
    """The earlier run read its data from inside the run folder; the new run reads elsewhere. --overwrite once removed
    that data (only the new data.root was protected), after a refusal that suggested --overwrite."""
    run = tmp_path / "run"
    for data in (run / "data", run / "translated" / "cases"):  # a folder named data; one inside a run output
        shutil.copytree(SAMPLE / "mr2ct" / "sub-01", data / "sub-01")
    (run / "train").mkdir()
    (run / "train" / "history.csv").write_text("epoch\n")
    before = tree(run)
    elsewhere = tmp_path / "other"
    _claim_run_dir(run, _record(run / "translated" / "cases", 1), False, [])
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"its translated/ holds .*run/translated/cases, an input") as err:
            _claim_run_dir(run, _record(elsewhere, 2), overwrite, [elsewhere])
        assert "--overwrite" not in str(err.value)
    assert {k: v for k, v in tree(run).items() if k != "config.yaml"} == before
    shutil.rmtree(run / "translated")
    (run / "config.yaml").unlink()
    _claim_run_dir(run, _record(run / "data", 1), False, [run / "data"])
    _claim_run_dir(run, _record(elsewhere, 2), True, [elsewhere])  # data/ was the user's, not the run's: it stays
    assert tree(run / "data") == {k[len("data/") :]: v for k, v in before.items() if k.startswith("data/")}
    assert not (run / "train").exists()


def test_run_overwrite_removes_a_data_folder_only_when_the_run_made_it(tmp_path):
    run, user = tmp_path / "run", tmp_path / "user_data"
    user.mkdir()
    (run / "data").mkdir(parents=True)
    (run / "data" / "mine.txt").write_text("a user's folder named data")
    (run / "train").mkdir()
    _claim_run_dir(run, _record(user, 1), False, [])
    with pytest.raises(ConfigError, match="pass --overwrite"):
        _claim_run_dir(run, _record(user, 2), False, [user])
    _claim_run_dir(run, _record(user, 2), True, [user])
    assert (run / "data" / "mine.txt").is_file() and not (run / "train").exists()  # the run's own train/ went
    (run / "data" / "made.txt").write_text("pairs simulated by the run")  # now a run whose settings made data/
    _claim_run_dir(run, _record(user, 3, simulate_dose=0.25), True, [user])
    _claim_run_dir(run, _record(user, 4), True, [user])
    assert not (run / "data").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4


def test_export_overwrite_never_replaces_a_run_folder(tmp_path, checkpoints, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpoints["intensity_map"].parents[1], run)
    before = tree(run)
    model = run / "checkpoints" / "best.pt"
    assert main(["export", "--model", str(model), "--out", str(run), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not a bundle written by medtranslate export" in err and "Traceback" not in err
    assert tree(run) == before
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "bundle")]) == 0
    (tmp_path / "bundle" / "models" / "other.pt").write_bytes(b"a user's file")
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "bundle"), "--overwrite"]) == 2
    assert "holds models/other.pt, which this command did not write" in capsys.readouterr().err
    (tmp_path / "bundle" / "models" / "other.pt").unlink()
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "bundle"), "--overwrite"]) == 0


def test_export_to_the_current_folder_is_a_clear_error(tmp_path, checkpoints, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for out in (".", ".."):
        assert main(["export", "--model", str(checkpoints["intensity_map"]), "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is not a bundle written by medtranslate export" in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_dicom_series_replaces_only_a_series_it_wrote(tmp_path):
    from medtranslate.imaging.volume import Volume

    vol = Volume(ct_like(shape=(8, 9, 3)), oblique_affine())
    folder = tmp_path / "series"
    write_dicom_series(folder, vol)
    write_dicom_series(folder, vol, overwrite=True)
    (folder / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(OutputError, match="holds report.pdf"):
        write_dicom_series(folder, vol, overwrite=True)
    assert (folder / "report.pdf").is_file() and len(list(folder.glob("slice_*.dcm"))) == 3


def _users_folder(folder: Path) -> dict[str, str]:
    """A folder a user gives as the output: notes, a scan of their own and a sub-folder. Returns its snapshot."""
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    write_nifti(folder / "sub" / "scan.nii.gz", ct_like(shape=(8, 8, 4)), oblique_affine())
    return tree(folder)


def test_every_folder_command_with_overwrite_keeps_what_it_did_not_write(tmp_path, checkpoints, tiny_data):
    """info, convert, translate, evaluate, simulate-lowdose (preprocess, export and run above): given a user's folder
    as the output, with --overwrite, each adds its outputs and leaves every file it did not write as it was."""
    inputs = tmp_path / "in"
    shutil.copytree(tiny_data / "s0", inputs / "s0")
    before_inputs = tree(inputs)
    assert main(["info", str(inputs)]) == 0
    out = tmp_path / "translate"
    mine = _users_folder(out)
    args = ["translate", "--model", str(checkpoints["intensity_map"]), "--input", str(inputs), "--no-progress"]
    assert main([*args, "--output", str(out), "--overwrite"]) == 0
    assert main([*args, "--output", str(out), "--overwrite"]) == 0  # its own outputs replaced, the rest kept
    assert {k: v for k, v in tree(out).items() if k in mine} == mine and (out / "s0_sct.nii.gz").is_file()
    ev = tmp_path / "evaluate"
    mine = _users_folder(ev)
    pred, ref = out / "s0_sct.nii.gz", inputs / "s0" / "ct.nii.gz"
    evaluate = ["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(ev), "--no-progress"]
    assert main(evaluate) == 0 and main(evaluate) == 0
    assert {k: v for k, v in tree(ev).items() if k in mine} == mine and (ev / "report.html").is_file()
    low = tmp_path / "lowdose"
    mine = _users_folder(low)
    simulate = ["simulate-lowdose", "--dose", "0.5", "--input", str(inputs / "s0" / "ct.nii.gz"), "--output", str(low)]
    assert main([*simulate, "--no-progress", "--overwrite"]) == 0
    assert {k: v for k, v in tree(low).items() if k in mine} == mine and len(list(low.glob("*_ld.nii.gz"))) == 1
    conv = tmp_path / "convert"
    mine = _users_folder(conv)
    assert main(["convert", str(inputs / "s0" / "mr.nii.gz"), str(conv), "--overwrite"]) == 2  # a folder: refused
    assert tree(conv) == mine
    assert tree(inputs) == before_inputs
