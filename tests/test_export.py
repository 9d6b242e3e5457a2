"""MONAI bundle export: the bundle runs with `python -m monai.bundle run` and writes what `translate` writes."""

from __future__ import annotations

import json
import subprocess
import sys

from medtranslate.io.files import read_volume

from .conftest import cli, translate_cli


def test_the_exported_bundle_runs_under_monai_and_gives_translates_volumes(tmp_path, checkpoints, tiny_data):
    bundle = tmp_path / "bundle"
    made = cli("export", "--model", str(checkpoints["pix2pix"]), "--out", str(bundle))
    assert made.returncode == 0, made.stderr
    names = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert names == ["configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.pt"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["task"] == "MR -> synthetic CT" and meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert {"version", "monai_version", "pytorch_version", "numpy_version", "authors", "intended_use"} <= set(meta)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("s2", "s3"):
        (inputs / f"{case}_mr.nii.gz").write_bytes((tiny_data / case / "mr.nii.gz").read_bytes())

    # the model-zoo overrides on MONAI's own command line, from another working directory
    def monai_run(config_file, output):
        run = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_file), "--bundle_root"]
            + [str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(output)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]

    monai_run(bundle / "configs" / "inference.json", tmp_path / "monai")
    # a bundle exported before the package moved into stage subpackages names medtranslate.translate: it still runs
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["translate"]["_target_"] == "medtranslate.inference.translate.translate_folder"
    config["imports"] = ["$import medtranslate.translate"]
    config["translate"]["_target_"] = "medtranslate.translate.translate_folder"
    (tmp_path / "old_inference.json").write_text(json.dumps(config))
    monai_run(tmp_path / "old_inference.json", tmp_path / "old")
    ours = translate_cli(str(checkpoints["pix2pix"]), str(inputs), str(tmp_path / "ours"))
    assert ours.returncode == 0, ours.stderr
    for case in ("s2", "s3"):
        b = read_volume(tmp_path / "ours" / f"{case}_sct.nii.gz")
        for made_by in ("monai", "old"):
            a = read_volume(tmp_path / made_by / f"{case}_sct.nii.gz")
            assert a.shape == b.shape and abs(a.array.astype(int) - b.array.astype(int)).max() <= 1  # within 1 HU
            assert (a.affine == b.affine).all()
    again = cli("export", "--model", str(checkpoints["pix2pix"]), "--out", str(bundle))
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"nonsense")
    refused = cli("export", "--model", str(bad), "--out", str(tmp_path / "b2"))
    assert refused.returncode == 2 and "not_a_model.pt" in refused.stderr and not (tmp_path / "b2").exists()
