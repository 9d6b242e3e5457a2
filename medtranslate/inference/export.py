"""Export a checkpoint as a MONAI bundle, the way MONAI users share models.

``medtranslate export --model best.pt --out bundle/`` writes the model-zoo layout::

    bundle/configs/metadata.json    what the model is, its input and output, the versions it ran with
    bundle/configs/inference.json   the inference workflow (MONAI's config syntax)
    bundle/models/model.pt          the checkpoint (networks, intensity scaling, preprocessing recipe)
    bundle/docs/README.md           how to run it, and what it is not for

which runs with ``python -m monai.bundle run --config_file bundle/configs/inference.json`` and the model-zoo overrides
``--bundle_root``, ``--dataset_dir`` (a folder of NIfTI, or any input ``translate`` takes) and ``--output_dir``. The
workflow calls medtranslate's own translation (so the bundle needs the ``medtranslate`` package installed): the
volumes come out as ``medtranslate translate`` writes them, on the input's grid and in HU, which a chain of generic
transforms could not promise for every orientation and spacing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medtranslate import __version__
from medtranslate.core.atomic import OwnFolder, atomic_output
from medtranslate.core.tasks import get_task
from medtranslate.io.files import sha256
from medtranslate.models.checkpoint import TranslatorSpec, load_checkpoint

__all__ = ["export_bundle", "inference_config"]


def inference_config() -> dict[str, Any]:
    """The bundle's ``configs/inference.json``: translate every case of ``dataset_dir`` into ``output_dir``."""
    return {
        "imports": ["$import medtranslate.inference.translate"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "model_path": "$@bundle_root + '/models/model.pt'",
        "device": "auto",
        "precision": "auto",
        "batch_size": None,  # translate's default for the device
        "translate": {
            "_target_": "medtranslate.inference.translate.translate_folder",
            "_mode_": "callable",
            "model": "@model_path",
            "input": "@dataset_dir",
            "output": "@output_dir",
            "device": "@device",
            "precision": "@precision",
            "batch_size": "@batch_size",
            "progress": False,
        },
        "run": ["$@translate()"],
    }


def _metadata(ckpt: dict[str, Any], digest: str) -> dict[str, Any]:
    import monai
    import numpy as np
    import torch

    spec = TranslatorSpec.from_dict(ckpt["spec"])
    task = get_task(spec.task)
    channels = 2 * int(spec.context) + 1
    side = [f"{spec.divisor}*n", f"{spec.divisor}*n"]
    what = task.summary
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medtranslate {__version__} from a checkpoint with sha256 {digest}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"medtranslate": __version__},
        "name": f"medtranslate {task.name} {ckpt['kind']}",
        "task": what,
        "description": f"{what} with a slice-wise 2D {ckpt['kind']} generator ({channels} input slice(s)); volumes in "
        "any orientation and spacing, outputs in HU on the input's grid",
        "authors": "medtranslate",
        "copyright": "the authors of the model's training data and run",
        "intended_use": "research only: a synthetic image, not an acquired scan; not for clinical use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude" if task.source_kind == "mr" else "hounsfield",
                    "modality": "MR" if task.source_kind == "mr" else "CT",
                    "num_channels": channels,
                    "spatial_shape": side,
                    "dtype": "float32",
                    "value_range": [-1, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): f"axial slice z{i - spec.context:+d}" for i in range(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": side,
                    "dtype": "float32",
                    "value_range": [-1, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "axial slice z (HU scaled to [-1, 1]; the workflow writes HU)"},
                }
            },
        },
    }


def _readme(ckpt: dict[str, Any], digest: str) -> str:
    task = get_task(TranslatorSpec.from_dict(ckpt["spec"]).task)
    return f"""# medtranslate {task.name} {ckpt["kind"]}

Exported by medtranslate {__version__} from a checkpoint with sha256 `{digest}`.

A slice-wise 2D {ckpt["kind"]} generator: {task.source_role} -> {task.target_role}. It writes
`<case>_{task.output_suffix}.nii.gz` for every case of a folder, in HU on the input's own grid, exactly as
`medtranslate translate` does (it calls it), with a `manifest.csv`.

## Run

```bash
pip install medtranslate   # the workflow calls its translation
python -m monai.bundle run --config_file configs/inference.json \\
    --bundle_root . --dataset_dir /path/to/nifti --output_dir /path/to/output
```

Also overridable: `--device` (auto, cpu, cuda), `--precision` (auto, fp32, bf16), `--batch_size`.

## Intended use

Research only. The output is a synthetic image, not an acquired scan, and not for clinical use. A model trained on
phantoms (the medtranslate demo) is not for real scans.
"""


# what a bundle written by export holds: only such a folder is ever replaced (--overwrite)
BUNDLE = OwnFolder(
    "configs/metadata.json",
    ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"),
    "a bundle written by medtranslate export",
)


def export_bundle(model: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the MONAI bundle of checkpoint ``model`` into folder ``out`` (whole or not at all).

    Raises:
        CheckpointError: ``model`` is not a medtranslate checkpoint.
        OutputError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    model, out = Path(model), Path(out)
    ckpt = load_checkpoint(model)
    digest = sha256(model)
    with atomic_output(out, directory=True, overwrite=overwrite, own=BUNDLE) as tmp:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        (tmp / "configs" / "metadata.json").write_text(json.dumps(_metadata(ckpt, digest), indent=2) + "\n")
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(), indent=2) + "\n")
        shutil.copyfile(model, tmp / "models" / "model.pt")
        (tmp / "docs" / "README.md").write_text(_readme(ckpt, digest))
    return out
