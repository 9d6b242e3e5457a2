"""The checkpoint format: every kind of run saves a file that loads with weights_only=True; unsafe or foreign files
are refused with a message that says why."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from medtranslate.core.config import load_config
from medtranslate.core.errors import CheckpointError
from medtranslate.models.checkpoint import (
    TranslatorSpec,
    build_inference_net,
    load_checkpoint,
    plain,
    save_checkpoint,
    state_sha256,
)
from medtranslate.training.train import Trainer

from .conftest import translate_cli, write_config


def _without_split(root, dest):
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("split.json"))
    return dest


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,task", [("pix2pix", "mr2ct"), ("cyclegan", "mr2ct"), ("intensity_map", "mr2ct"), ("classical", "ldct")]
)
@pytest.mark.parametrize("split", ["file", "random"])
def test_every_checkpoint_kind_loads_with_weights_only(tmp_path, tiny_data, ldct_data, kind, task, split):
    root = tiny_data if task == "mr2ct" else ldct_data
    if split == "random":  # no split file: the split is drawn, and was stored as numpy strings before
        root = _without_split(root, tmp_path / "data" / "cases")
    cfg = load_config(write_config(tmp_path / "c.yaml", root, kind, **{"model.task": task, "train.epochs": 1}))
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    for name in ("last.pt", "best.pt") if kind in ("pix2pix", "cyclegan") else ("best.pt",):
        path = tmp_path / "run" / "checkpoints" / name
        raw = torch.load(str(path), weights_only=True)  # torch's own safe loader, not ours
        assert raw["kind"] == kind and all(type(i) is str for part in raw["split"].values() for i in part)
        ckpt = load_checkpoint(path)
        net = build_inference_net(ckpt, torch.device("cpu"))
        assert TranslatorSpec.from_dict(ckpt["spec"]).task == task and not net.training
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved == raw["split"]
    inputs = tmp_path / "in"
    case = sorted(p for p in root.iterdir() if p.is_dir())[0]
    inputs.mkdir()
    shutil.copy(case / ("mr.nii.gz" if task == "mr2ct" else "ld.nii.gz"), inputs / "x.nii.gz")
    result = translate_cli(str(tmp_path / "run" / "checkpoints" / "best.pt"), str(inputs), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr


def test_plain_turns_numpy_into_python_and_refuses_objects():
    state = plain(
        {"split": {"train": [np.str_("a")]}, "n": np.int64(3), "w": np.zeros(2, np.float32), "t": (np.float64(1.5),)}
    )
    assert type(state["split"]["train"][0]) is str and type(state["n"]) is int and isinstance(state["w"], torch.Tensor)
    assert type(state["t"][0]) is float
    with pytest.raises(TypeError, match=r"checkpoint\.bad: a object cannot be stored"):
        plain({"bad": object()})


def test_save_refuses_what_the_safe_loader_would_refuse_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint({"format": 1, "thing": object()}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


class Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_unsafe_pickle_is_refused_saying_it_could_run_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "spec": Evil()}, str(path))
    with pytest.raises(CheckpointError, match=r"refused: .*could run code") as info:
        load_checkpoint(path)
    assert "(print)" in str(info.value) and "unpickled" not in capsys.readouterr().out
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        load_checkpoint(tmp_path / "garbage.pt")
    assert "could run code" not in str(info.value)


def test_a_checkpoint_with_a_setting_this_version_does_not_know_names_it_whole(tmp_path, checkpoints):
    ckpt = load_checkpoint(checkpoints["pix2pix"])
    ckpt["config"]["train"]["a_later_setting"] = 1  # as a newer version's checkpoint carries
    path = save_checkpoint(ckpt, tmp_path / "newer.pt")
    (tmp_path / "in").mkdir()
    result = translate_cli(str(path), str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown key train.a_later_setting" in result.stderr and "needs that version" in result.stderr
    assert result.stderr.count("newer.pt") == 1  # the file named, once
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "field,value,match", [("task", "ct2mr", "unknown task 'ct2mr'"), ("source_kind", "pet", "source kind 'pet'")]
)
def test_a_crafted_checkpoint_with_an_unknown_task_is_refused(tmp_path, field, value, match):
    spec = TranslatorSpec("mr2ct", "mr", {"kind": "ct", "lo": -1024.0, "hi": 3071.0}).to_dict()
    spec[field] = value
    path = save_checkpoint(
        {"format": 1, "kind": "intensity_map", "spec": spec, "model": {"nets": {"G": {"table": torch.zeros(4)}}}},
        tmp_path / "c.pt",
    )
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    (tmp_path / "in").mkdir()
    result = translate_cli(str(path), str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.returncode == 2 and match.split("'")[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_weights_only_refusal_is_a_pickle_error_we_recognise(tmp_path):
    # the refusal path depends on torch raising UnpicklingError for unsafe globals; keep that assumption checked
    path = tmp_path / "np.pt"
    torch.save({"a": np.str_("x")}, str(path))
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(str(path), weights_only=True)


def _member(path, data):
    """Offset and size of the checkpoint's largest tensor record in the file (torch stores members uncompressed)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    off = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[off + 26 : off + 30])
    return info, off + 30 + name_len + extra_len


def test_a_damaged_or_altered_checkpoint_is_refused(tmp_path, checkpoints):
    """Weights overwritten in place once loaded and translated 195 HU off: the archive's CRCs and the stored sha256
    of the state are now checked."""
    import zipfile

    src = checkpoints["pix2pix"]
    data = bytearray(src.read_bytes())
    info, start = _member(src, data)
    damaged = bytearray(data)
    damaged[start + 100 : start + 164] = bytes(64)  # 16 weights zeroed, the archive's CRC left as it was
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"damaged: .* fails its CRC check"):
        load_checkpoint(tmp_path / "damaged.pt")
    # the same change with the CRCs made anew (a tool that rewrites the archive): the state's sha256 catches it
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(tmp_path / "altered.pt", "w", zipfile.ZIP_STORED) as new:
        for member in old.infolist():
            payload = bytearray(old.read(member))
            if member.filename == info.filename:
                payload[100:164] = bytes(64)
            new.writestr(member.filename, bytes(payload))
    with pytest.raises(CheckpointError, match="do not match the checksum stored when it was written"):
        load_checkpoint(tmp_path / "altered.pt")
    ckpt = load_checkpoint(src)  # the original loads, and its checksum covers what it holds
    assert ckpt["state_sha256"] == state_sha256(ckpt)
    ckpt["best_mae"] = float(ckpt["best_mae"] or 0) + 1.0
    assert state_sha256(ckpt) != ckpt["state_sha256"]
