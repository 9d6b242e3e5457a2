"""Volume -> volume inference: preprocess like training, run the generator slice by slice, invert to the input's
grid and units (HU for CT).

The checkpoint carries a :class:`TranslatorSpec` (source kind and scaling recipe, target scaling, 2.5D context,
spatial divisor, spacing), so inference undoes exactly what training did.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError
from .io import Volume
from .transforms import IntensityParams, Preprocessor, intensity_for

__all__ = ["TranslatorSpec", "translate_volume", "translate_folder", "build_inference_net", "resolve_device", "load_checkpoint", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TranslatorSpec:
    """What inference needs to reproduce training's preprocessing and undo its scaling."""

    task: str  # mr2ct | ldct
    source_kind: str  # mr | ct
    target_intensity: dict[str, Any]  # IntensityParams.to_dict() of the target (CT)
    context: int = 0
    divisor: int = 1
    spacing: tuple[float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing"] = list(self.spacing) if self.spacing else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TranslatorSpec":
        return cls(
            task=d["task"], source_kind=d["source_kind"], target_intensity=dict(d["target_intensity"]), context=int(d.get("context", 0)),
            divisor=int(d.get("divisor", 1)), spacing=tuple(d["spacing"]) if d.get("spacing") else None,
        )


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


@torch.no_grad()
def translate_volume(
    net: nn.Module,
    volume: Volume,
    spec: TranslatorSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> Volume:
    """Translate one volume with a slice-wise generator; the result is on ``volume``'s grid, in target units (HU).

    Args:
        net: generator mapping (B, 2k+1, X, Y) in [-1, 1] to (B, 1, X, Y) in [-1, 1].
        volume: the input scan (any orientation and spacing).
        spec: preprocessing and scaling recipe from the checkpoint.
        batch_size: slices per forward pass.
        amp_dtype: autocast dtype (e.g. torch.bfloat16) or None for float32.
        tta: average the prediction over a left-right flip of the input.
    """
    device = torch.device(device)
    intensity = intensity_for(spec.source_kind, volume.array, volume.affine)
    pre = Preprocessor(spacing=spec.spacing, divisible=(spec.divisor, spec.divisor, 1))
    data = pre(volume, intensity, keep_mask=False)  # no crop to the body: no mask needed
    image = data["image"].as_tensor().float()
    depth = image.shape[-1]
    pred = torch.empty_like(image)
    was_training = net.training
    net.eval()
    offsets = torch.arange(-spec.context, spec.context + 1)
    try:
        for z0 in range(0, depth, batch_size):
            zs = torch.arange(z0, min(z0 + batch_size, depth))
            idx = torch.clamp(zs[:, None] + offsets[None, :], 0, depth - 1)  # (b, 2k+1)
            batch = image[0][:, :, idx].permute(2, 3, 0, 1).to(device)  # (b, 2k+1, X, Y)
            out = _forward(net, batch, amp_dtype, device)
            if tta:
                out = 0.5 * (out + torch.flip(_forward(net, torch.flip(batch, dims=[2]), amp_dtype, device), dims=[2]))
            pred[0, :, :, z0 : z0 + len(zs)] = out[:, 0].permute(1, 2, 0).float().cpu()
    finally:
        net.train(was_training)
    return pre.invert(pred, data["image"], IntensityParams.from_dict(spec.target_intensity), volume)


def _forward(net: nn.Module, batch: torch.Tensor, amp_dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    if amp_dtype is None:
        return net(batch)
    with torch.autocast(device.type, dtype=amp_dtype):
        return net(batch).float()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a medtranslate checkpoint safely (``weights_only=True``: no arbitrary objects are unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or unsafe pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a medtranslate checkpoint, or it cannot be loaded safely ({first[:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "spec" not in ckpt:
        raise CheckpointError(f"{path}: not a medtranslate checkpoint (format {CHECKPOINT_FORMAT} expected); train one with 'medtranslate train'")
    return ckpt



# ----------------------------------------------------------------------------------------------------- models


def build_inference_net(ckpt: dict[str, Any], device: torch.device) -> nn.Module:
    """The source -> target network of a checkpoint, in eval mode on ``device``."""
    from .baselines import ClassicalDenoiser, IntensityMap
    from .config import RunConfig
    from .gan import build_generator

    kind = ckpt.get("kind")
    try:
        if kind == "intensity_map":
            net: nn.Module = IntensityMap(int(ckpt["model"]["nets"]["G"]["table"].numel()))
        elif kind == "classical":
            net = ClassicalDenoiser()
        elif kind in ("pix2pix", "cyclegan"):
            net = build_generator(RunConfig.from_dict(ckpt["config"], source="checkpoint config"), int(ckpt["in_channels"]))
        else:
            raise CheckpointError(f"checkpoint holds an unknown model kind {kind!r}")
        net.load_state_dict(ckpt["model"]["nets"]["G"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint's networks cannot be rebuilt ({str(exc).splitlines()[0][:160]})") from exc
    return net.to(device).eval()


# ----------------------------------------------------------------------------------------------------- batches

OUTPUT_SUFFIX = {"mr2ct": "sct", "ldct": "denoised"}
SOURCE_ROLES = {"mr2ct": ("mr", None), "ldct": ("ld", None)}


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise CheckpointError(f"--shard {text!r}: expected I/N with whole numbers, e.g. 0/4") from None
    if not 0 <= i < n:
        raise CheckpointError(f"--shard {text!r}: I must be in 0..N-1")
    return i, n


def translate_folder(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    fmt: str = "nifti",
    tta: bool = False,
    shard: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Translate every case of a file or folder into ``output``; resumable, shardable, never touching inputs.

    Writes ``<case>_sct.nii.gz`` (MR -> CT) or ``<case>_denoised.nii.gz`` (low-dose CT) as int16 HU clipped to
    [-1024, 3071] on the input's exact grid, and ``manifest.csv`` (``manifest.shardIofN.csv`` when sharded), rewritten
    after every case. Cases whose output exists are skipped unless ``overwrite``.

    Returns:
        The manifest rows.
    """
    from .batch import prepare_output_folder, run_cases
    from .errors import InputError
    from .evaluate import select_cases
    from .io import read_case, write_dicom_series, write_nifti

    model, inp, out = Path(model), Path(input), Path(output)
    if fmt not in ("nifti", "dicom"):
        raise InputError(f"--format {fmt!r}: expected one of: dicom, nifti")
    index, count = parse_shard(shard)
    ckpt = load_checkpoint(model)
    spec = TranslatorSpec.from_dict(ckpt["spec"])
    dev = resolve_device(device)
    if not inp.exists():
        raise InputError(f"{inp}: no such file or folder; check --input")
    prepare_output_folder(inp, out)
    net = build_inference_net(ckpt, dev)
    digest = _sha256(model)
    cases = sorted(select_cases(inp, SOURCE_ROLES[spec.task], "input").values(), key=lambda c: c.case_id)[index::count]
    suffix = OUTPUT_SUFFIX[spec.task]

    def outputs(case: Any) -> list[Path]:
        targets = [out / f"{case.case_id}_{suffix}.nii.gz"]
        return targets + ([out / f"{case.case_id}_{suffix}_dicom"] if fmt == "dicom" else [])

    def work(case: Any, targets: list[Path]) -> None:
        result = translate_volume(net, read_case(case), spec, dev, batch_size=batch_size, tta=tta)
        hu = np.clip(result.array, -1024, 3071)
        if fmt == "dicom":
            if targets[1].exists():
                shutil.rmtree(targets[1])
            write_dicom_series(targets[1], Volume(hu, result.affine), modality="CT", series_description=f"medtranslate {suffix}",
                               comments=f"Synthetic image made by medtranslate ({ckpt['kind']}, checkpoint sha256 {digest[:16]}) from {case.label}; not an acquired scan")
        write_nifti(targets[0], hu, result.affine, np.int16, overwrite=True)

    manifest = out / ("manifest.csv" if count == 1 else f"manifest.shard{index}of{count}.csv")
    return run_cases(cases, manifest, outputs, work, overwrite=overwrite, progress=progress, extra={"checkpoint_sha256": digest}, desc="translate")
