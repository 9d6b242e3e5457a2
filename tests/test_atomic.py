"""Atomic outputs: whole or absent, whatever fails; stale temporary files of dead processes only are cleaned up."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from medtranslate.core.atomic import atomic_output, atomic_write_text, partial_name, remove_stale_partials
from medtranslate.core.errors import OutputError

from .conftest import SAMPLE, TINY, cli, run_cli


def test_a_failing_writer_leaves_neither_output_nor_temporary_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            assert tmp.name.startswith(".out.partial-") and tmp.name.endswith(".nii.gz")
            raise ValueError("writer crashed")
    with pytest.raises(OutputError, match=r"out.nii.gz: cannot write \(.*\); nothing was left half-written"):
        with atomic_output(target) as tmp:
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_text_is_utf8_whatever_the_locale_and_replaces_atomically(tmp_path):
    path = atomic_write_text(tmp_path / "ü" / "m.csv", "case,input\nx,/data/Patiënt\n")
    assert path.read_bytes().decode("utf-8").endswith("Patiënt\n")
    atomic_write_text(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n" and sorted(p.name for p in path.parent.iterdir()) == ["m.csv"]


def test_stale_partials_of_dead_processes_go_and_those_of_running_ones_stay(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        mine = partial_name(tmp_path / "a_sct.nii.gz")
        theirs = tmp_path / mine.name.replace(f"-{os.getpid()}.", f"-{live.pid}.")
        stale = tmp_path / mine.name.replace(f"-{os.getpid()}.", f"-{dead.pid}.")
        stale_dir = tmp_path / partial_name(tmp_path / "b_sct_dicom").name.replace(f"-{os.getpid()}", f"-{dead.pid}")
        other_host = tmp_path / ".c_sct.partial-otherhost-1.nii.gz"
        for p in (mine, theirs, stale, other_host):
            p.write_bytes(b"x")
        stale_dir.mkdir()
        (stale_dir / "slice_0000.dcm").write_bytes(b"x")
        removed = remove_stale_partials(tmp_path)
        assert sorted(p.name for p in removed) == sorted([stale.name, stale_dir.name])
        assert mine.exists() and theirs.exists() and other_host.exists()
    finally:
        live.kill()
        live.wait()


def _limited(max_bytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def _run(args, env, max_bytes=None):
    return run_cli(*args, env=env, preexec_fn=_limited(max_bytes) if max_bytes else None, timeout=300)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, tiny_data, numba_cache):
    """A disk that fills mid-write (a file-size limit fails the write as ENOSPC would) in convert, evaluate, train.

    The metrics' compiled kernels are in numba's cache first (``numba_cache``), so the write that fails is
    medtranslate's, not numba's first cache write.
    """
    import yaml

    env = dict(os.environ)
    ct = SAMPLE / "mr2ct" / "sub-01" / "ct.nii.gz"
    out = tmp_path / "conv"
    out.mkdir()
    result = _run(["convert", str(ct), str(out / "ct.nii.gz")], env, 20_000)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot write (File too large)" in result.stderr
    assert list(out.iterdir()) == []

    evaluate = ["evaluate", "--pred", str(ct), "--ref", str(ct), "--no-progress", "--out"]
    ev = tmp_path / "eval"
    result = _run([*evaluate, str(ev)], env, 2_000)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "File too large" in result.stderr.strip().splitlines()[-1]
    assert not [p for p in ev.rglob(".*")]

    cfg = tmp_path / "c.yaml"
    config = {"data": {"root": str(tiny_data)}, "model": {"kind": "pix2pix"}, "train": {}}
    for dotted, value in {**TINY, "train.epochs": 1}.items():
        section, key = dotted.split(".")
        config[section][key] = value
    cfg.write_text(yaml.safe_dump(config))
    # the slice cache: its first case fails to write, and no half-written case is left to be read by the next run
    fresh = tmp_path / "fresh"
    result = _run(["train", str(cfg), "--out", str(fresh), "--no-progress"], env, 30_000)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"{fresh / 'cache'}/s0-" in result.stderr
    assert "cannot write" in result.stderr and list((fresh / "cache").iterdir()) == []
    # a checkpoint (the cache shared with a first run that made it, so the checkpoint is the first write)
    config["data"]["cache"] = str(tmp_path / "shared-cache")
    cfg.write_text(yaml.safe_dump(config))
    assert cli("train", str(cfg), "--out", str(tmp_path / "warm_run"), "--no-progress").returncode == 0
    run = tmp_path / "run"
    result = _run(["train", str(cfg), "--out", str(run), "--no-progress"], env, 30_000)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "last.pt: cannot write" in result.stderr.strip().splitlines()[-1] and "is the disk full?" in result.stderr
    assert not [p for p in run.rglob(".*partial*")] and not list((run / "checkpoints").iterdir())


@pytest.mark.parametrize("command", ["convert", "evaluate", "train"])
def test_an_unwritable_output_location_is_one_line(tmp_path, command):
    """Read-only locations: /sys refuses new files even to root; a path below a regular file cannot be created."""
    ct = SAMPLE / "mr2ct" / "sub-01" / "ct.nii.gz"
    (tmp_path / "afile").write_text("x")
    for place in ("/sys/medtranslate-test", str(tmp_path / "afile" / "below")):
        if command == "convert":
            args = ["convert", str(ct), f"{place}/ct.nii.gz"]
        elif command == "evaluate":
            args = ["evaluate", "--pred", str(ct), "--ref", str(ct), "--out", place]
        else:
            cfg = tmp_path / "c.yaml"
            cfg.write_text(f"data: {{root: {SAMPLE / 'mr2ct'}}}\nmodel: {{kind: intensity_map}}\n")
            args = ["train", str(cfg), "--out", place]
        result = cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (place, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and place in result.stderr, result.stderr


def test_long_names_get_a_temporary_name_that_fits_or_a_clear_error(tmp_path):
    """Case ids of 227-244 characters made the temporary name overflow the 255-byte limit, and the error blamed
    permissions."""
    from medtranslate.core.errors import OutputError

    for n in (227, 244):
        target = tmp_path / ("k" * n + "_sct.nii.gz")
        assert len(partial_name(target).name.encode()) <= 255 and partial_name(target).name.endswith(".nii.gz")
        atomic_write_text(target, "x")
        assert target.read_text() == "x"
    assert partial_name(tmp_path / ("k" * 240 + "a.txt")) != partial_name(tmp_path / ("k" * 240 + "b.txt"))
    with pytest.raises(OutputError, match=r"its name is too long for the file system \(270 bytes\)"):
        atomic_write_text(tmp_path / ("k" * 259 + "_sct.nii.gz"), "x")
    assert sorted(p.name[:3] for p in tmp_path.iterdir()) == ["kkk", "kkk"]  # nothing else left behind
