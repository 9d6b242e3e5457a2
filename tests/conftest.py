"""Shared fixtures: tiny volumes with oblique, non-RAS, anisotropic geometry, written through the real writers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The suite's processes share compiled bytecode. An environment with PYTHONDONTWRITEBYTECODE (and a venv installed
# with pip --no-compile) otherwise has every process it starts compile torch and MONAI from source again: 7 of the
# 13 s that a process took to import them on a 2-core EPYC.
if sys.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
    sys.dont_write_bytecode = False
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n runs one worker per core: each worker and the processes it starts take one thread, set before torch,
    # numba, BLAS or ITK (SimpleITK: registration, N4, resampling) start their pools, or the workers' pools
    # oversubscribe the cores (the suite then ran slower on 2 workers than on one process)
    os.environ.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1",
    )

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from medtranslate.core.config import load_config
from medtranslate.data.phantom import make_subject
from medtranslate.imaging.volume import Volume
from medtranslate.io.files import read_volume, write_nifti
from medtranslate.training.train import Trainer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def oblique_affine(
    spacing=(0.9, 1.3, 2.5),
    angles_deg=(12.0, -8.0, 20.0),
    axcodes_flip=(True, False, True),
    origin=(-31.0, 17.5, -42.0),
) -> np.ndarray:
    """A voxel-to-RAS affine with a rotated (oblique) direction, flipped axes (non-RAS) and anisotropic spacing."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    flips = np.diag([-1.0 if f else 1.0 for f in axcodes_flip])
    direction = rz @ ry @ rx @ flips
    if np.linalg.det(direction) < 0:  # keep a proper rotation so every format (DICOM too) can store it
        direction[:, 1] *= -1
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ct_like(shape=(24, 28, 14), seed=0) -> np.ndarray:
    """An int16 HU volume: air around an ellipsoid of soft tissue with a bone shell and noise."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(3)))
    hu = np.full(shape, -1000.0)
    hu[r < 1.0] = 1200.0
    hu[r < 0.85] = 40.0
    hu += rng.normal(0, 10, shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


@pytest.fixture
def ct_volume() -> Volume:
    return Volume(ct_like(), oblique_affine())


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env=None, preexec_fn=None
) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    # explicit UTF-8: a C library (GDCM) can switch this process's locale to ASCII at run time
    return subprocess.run(
        [sys.executable, "-m", "medtranslate", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        timeout=timeout,
        env=env,
        preexec_fn=preexec_fn,
    )


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command line in this process (``medtranslate.cli.main``), as a subprocess of ``run_cli`` would but
    without starting Python, torch and MONAI again: exit status, stdout, and stderr with the log lines as the console
    shows them. For what a process is needed for (signals, torchrun, a fresh interpreter, the environment), run_cli."""
    import contextlib
    import io
    import logging

    from medtranslate import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("medtranslate")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if "--verbose" in args or "-v" in args else logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
                try:
                    code = cli_module.main(list(args))
                except SystemExit as exc:  # argparse's usage errors
                    code = exc.code if isinstance(exc.code, int) else 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return subprocess.CompletedProcess(["medtranslate", *args], code, out.getvalue(), err.getvalue())


def torchrun_cli(*args: str, nproc: int = 2, env=None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m medtranslate ARGS`` (PyTorch's launcher) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        + ["-m", "medtranslate", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        env=env,
    )


def translate_cli(model, inputs, output, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    """``medtranslate translate --model M --input I --output O --no-progress EXTRA...``: in this process, or in a
    subprocess when the call needs one (an environment, a timeout, a signal)."""
    args = ("translate", "--model", str(model), "--input", str(inputs), "--output", str(output), "--no-progress")
    if set(kwargs) - {"cwd"}:
        return run_cli(*args, *extra, **kwargs)
    return cli(*args, *extra, **kwargs)


TINY = {
    "model.ngf": 4,
    "model.ndf": 4,
    "model.num_downs": 3,
    "model.n_blocks": 1,
    "data.patch_size": 32,
    "train.batch_size": 2,
    "train.steps_per_epoch": 3,
    "train.epochs": 2,
    "train.channels_last": False,
    "train.precision": "fp32",  # tests compare runs across machines: auto picks bf16 on some and fp32 on others
}


@contextlib.contextmanager
def torch_threads(n: int):
    """torch on n threads inside, on its count from before after (a run with train.num_threads sets the process's)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torchrun_rank0(monkeypatch):
    """This process with the environment torchrun gives rank 0 of 2 processes: what is refused before the ranks meet
    shows in one process. Returns ``monkeypatch`` to undo it early."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    return monkeypatch


@pytest.fixture(scope="session")
def numba_cache() -> None:
    """The metrics' compiled kernels in numba's cache beside the package, which the processes a test starts share:
    such a process loads them instead of compiling and writing them."""
    from medtranslate.evaluation.metrics import synthrad_metrics

    ct = ct_like((16, 16, 16)).astype(np.float32)
    for edition in (2023, 2025):
        synthrad_metrics(ct + 5, ct, ct > -500, edition=edition)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Four small head phantoms in the per-subject layout, with a split file."""
    root = tmp_path_factory.mktemp("tiny") / "cases"
    for n in range(4):
        s = make_subject(100 + n, shape=(48, 48, 16), spacing=(4.6, 4.6, 10.4))
        write_nifti(root / f"s{n}" / "mr.nii.gz", s.mr.array, s.mr.affine)
        write_nifti(root / f"s{n}" / "ct.nii.gz", s.ct.array, s.ct.affine)
    (root / "split.json").write_text(json.dumps({"train": ["s0", "s1"], "val": ["s2"], "test": ["s3"]}))
    return root


@pytest.fixture(scope="session")
def cohort_data(tiny_data, tmp_path_factory):
    """Disjoint cohorts as a user with unpaired scans has them: MR-only subjects (u0, u1: head-only field of view,
    LAS grid) in mr/, CT-only subjects (u2, u3: another spacing and size, RPI grid) in ct/, no subject in common;
    plus the tiny phantoms' paired cases s2 (validation) and s3 (test) in the per-subject layout."""
    root = tmp_path_factory.mktemp("cohorts") / "cases"
    for n in (0, 1):
        s = make_subject(300 + n, shape=(48, 48, 16), spacing=(4.6, 4.6, 10.4), axcodes="LAS")
        top = np.eye(4)
        top[2, 3] = 5  # the upper 11 slices: no neck
        write_nifti(root / "mr" / f"u{n}.nii.gz", s.mr.array[..., 5:], s.mr.affine @ top)
    for n in (2, 3):
        s = make_subject(300 + n, shape=(40, 40, 14), spacing=(5.5, 5.5, 12.0), axcodes="RPI")
        write_nifti(root / "ct" / f"u{n}.nii.gz", s.ct.array, s.ct.affine)
    for case in ("s2", "s3"):
        shutil.copytree(tiny_data / case, root / case)
    (root / "split.json").write_text(json.dumps({"train": ["u0", "u1", "u2", "u3"], "val": ["s2"], "test": ["s3"]}))
    return root


@pytest.fixture(scope="session")
def ldct_data(tiny_data, tmp_path_factory):
    """Low-dose / normal-dose pairs: the tiny phantoms' CTs with and without added noise, same split as tiny_data."""
    root = tmp_path_factory.mktemp("ldct") / "cases"
    rng = np.random.default_rng(0)
    for case in sorted(p for p in tiny_data.iterdir() if p.is_dir()):
        ct = read_volume(case / "ct.nii.gz")
        write_nifti(root / case.name / "nd.nii.gz", ct.array, ct.affine)
        write_nifti(root / case.name / "ld.nii.gz", ct.array + rng.normal(0, 30, ct.shape), ct.affine, np.int16)
    shutil.copy(tiny_data / "split.json", root / "split.json")
    return root


@pytest.fixture(scope="session")
def ldct_cohort_data(ldct_data, tmp_path_factory):
    """Disjoint low-dose cohorts: the low-dose scans of s0, s1 in ld/, normal-dose scans of two other subjects (n0,
    n1, on a finer RAS grid) in nd/; plus the paired cases s2 (validation) and s3 (test) of ldct_data."""
    root = tmp_path_factory.mktemp("ldct_cohorts") / "cases"
    (root / "ld").mkdir(parents=True)
    for n in (0, 1):
        shutil.copy(ldct_data / f"s{n}" / "ld.nii.gz", root / "ld" / f"s{n}.nii.gz")
        other = make_subject(400 + n, shape=(96, 96, 16), spacing=(2.3, 2.3, 10.4), axcodes="RAS").ct
        write_nifti(root / "nd" / f"n{n}.nii.gz", other.array, other.affine)
    for case in ("s2", "s3"):
        shutil.copytree(ldct_data / case, root / case)
    (root / "split.json").write_text(json.dumps({"train": ["s0", "s1", "n0", "n1"], "val": ["s2"], "test": ["s3"]}))
    return root


def write_config(path, root, kind="pix2pix", **extra):
    cfg = {"data": {"root": str(root)}, "model": {"kind": kind, "task": "mr2ct"}, "train": {"seed": 3}}
    for dotted, value in {**TINY, **extra}.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def checkpoints(tiny_data, tmp_path_factory):
    """A tiny pix2pix (2.5D) and an intensity-map checkpoint trained on the tiny phantoms."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for kind, extra in (("pix2pix", {"data.context": 1, "train.epochs": 1}), ("intensity_map", {})):
        cfg = load_config(write_config(out / f"{kind}.yaml", tiny_data, kind, **extra))
        Trainer(cfg, out / kind, progress=False).fit()
        paths[kind] = out / kind / "checkpoints" / "best.pt"
    return paths


def dciodvfy_errors(path, iod: str = "Image") -> list[str]:
    """The errors David Clunie's DICOM validator (dicom3tools' dciodvfy, a test dependency) finds in one file, which
    it must have recognised as an ``iod`` object (its line names it: CTImage, MRImage, RTDose)."""
    tool = Path(sys.executable).parent / "dciodvfy"
    run = subprocess.run([str(tool if tool.exists() else "dciodvfy"), str(path)], capture_output=True, text=True)
    lines = (run.stdout + run.stderr).splitlines()
    assert any(line.endswith(iod) for line in lines), lines
    return [line for line in lines if line.startswith("Error")]
