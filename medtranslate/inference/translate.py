"""Volume -> volume inference: preprocess like training, run the generator slice by slice, invert to the input's
grid and units (HU for CT). A synthetic CT is air farther than 5 mm from the input's body outline (the network is
never trusted to leave empty space empty: trained on body slices, a CycleGAN painted tissue below the head).

The checkpoint carries a :class:`~medtranslate.models.checkpoint.TranslatorSpec` (source kind and scaling recipe, target
scaling, 2.5D context, spatial divisor, spacing), so inference undoes exactly what training did. An input that does
not look like what the model was trained on (an MR given to a denoiser, a CT given to an MR model, a constant image)
is refused, and a prediction that is not finite everywhere is never written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtranslate.core.checks import require_choice, require_exists, require_int
from medtranslate.core.errors import CheckpointError, InputError
from medtranslate.core.kinds import get_kind
from medtranslate.core.tasks import get_task
from medtranslate.imaging.preprocessor import Preprocessor
from medtranslate.imaging.transforms import (
    CT_RANGE,
    SLAB,
    IntensityParams,
    axial_axis,
    body_mask,
    intensity_for,
    outside_body,
)
from medtranslate.imaging.volume import Volume
from medtranslate.io.describe import check_modality
from medtranslate.io.files import sha256
from medtranslate.models.calibration import apply_calibration
from medtranslate.models.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint
from medtranslate.runtime.device import resolve_device
from medtranslate.runtime.precision import NO_NETWORK, PrecisionChoice, choose_precision, describe_machine

__all__ = ["translate_volume", "translate_with_uncertainty", "translate_folder"]

logger = logging.getLogger(__name__)


# Test-time views for --uncertainty tta: (left-right flip, shift along the first and second in-plane axes, pixels).
# Small shifts move the image against the network's pooling grid, flips against its learned asymmetries; both are
# changes the prediction should not depend on, so where it does the model is unsure.
TTA_VIEWS = ((False, 0, 0), (True, 0, 0), (False, 2, 0), (True, 0, 2), (False, -2, -2), (True, 2, 2), (False, 0, -2),
             (True, -2, 0))  # fmt: skip
UNCERTAINTY_METHODS = ("tta", "mc", "ensemble")
# slices per forward pass by device: 4 measured fastest on a 2-core CPU (docs/benchmarks.md, "Translation"); CUDA 8
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 8}


@torch.no_grad()
def translate_volume(
    net: nn.Module,
    volume: Volume,
    spec: TranslatorSpec,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> Volume:
    """Translate one volume with a slice-wise generator; the result is on ``volume``'s grid, in target units (HU).

    Args:
        net: generator mapping (B, 2k+1, X, Y) in [-1, 1] to (B, 1, X, Y) in [-1, 1].
        volume: the input scan (any orientation and spacing).
        spec: preprocessing and scaling recipe from the checkpoint.
        batch_size: slices per forward pass; None: the device's default (:data:`DEFAULT_BATCH_SIZE`).
        amp_dtype: autocast dtype (e.g. torch.bfloat16) or None for float32.
        tta: average the prediction over a left-right flip of the input.

    Raises:
        InputError: the volume does not look like the model's source modality, or is constant.
        CheckpointError: the network produced NaN or infinite values.
    """
    device = torch.device(device)
    batch_size = _batch_size(batch_size, device)
    pre, data, image, outside = _preprocess(volume, spec)
    views = TTA_VIEWS[:2] if tta else TTA_VIEWS[:1]
    pred = _predict(net, image, spec, device, batch_size, amp_dtype, views[0])
    for view in views[1:]:  # in place: sum() and a division made two more volume-sized copies
        pred += _predict(net, image, spec, device, batch_size, amp_dtype, view)
    pred /= len(views)
    _check_finite(pred, volume)
    reference = _released(data["image"])
    del image, data  # the network's input is not needed any more: the inversion's copies take its place in memory
    out = _calibrated(pre.invert(pred, reference, IntensityParams.from_dict(spec.target_intensity), volume), spec)
    if outside is not None:
        out.array[outside] = CT_RANGE[0]
    return out


@torch.no_grad()
def translate_with_uncertainty(
    net: nn.Module,
    volume: Volume,
    spec: TranslatorSpec,
    method: str,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    amp_dtype: torch.dtype | None = None,
    samples: int = 8,
    ensemble: list[nn.Module] | None = None,
    ensemble_specs: list[TranslatorSpec] | None = None,
) -> tuple[Volume, Volume]:
    """The mean prediction and its voxel-wise standard deviation in HU over the predictions of ``method``.

    ``method``: ``tta``, the views of :data:`TTA_VIEWS` (flips and shifts of 2 pixels, undone on the output); ``mc``,
    Monte Carlo dropout (Gal and Ghahramani 2016): the network's dropout layers stay on, each sample draws its own
    masks (seeded by the sample's number, so a case gives the same maps every time); ``ensemble``, one prediction by
    ``net`` and one by each network of ``ensemble`` (models trained apart with the same preprocessing, Lakshminarayanan
    et al. 2017). With ``ensemble`` networks and ``tta`` or ``mc``, every network gives ``samples`` predictions (its
    views, or its dropout samples) and all of them are pooled: the variance is then the members' mean variance plus
    the variance of their means. ``ensemble_specs``: the members' own specs, where they carry intensity calibrations
    of their own. Each sample is brought back to the input's grid and units (through its model's calibration) before
    the statistics, so the standard deviation is in HU on that grid.

    Raises:
        InputError: as :func:`translate_volume`; ``mc`` for a network without dropout layers.
    """
    device = torch.device(device)
    batch_size = _batch_size(batch_size, device)
    nets = [net, *(ensemble or [])]
    specs = [spec, *(ensemble_specs or [spec] * len(nets[1:]))]
    per_net, dropouts = _uncertainty_plan(nets, method, samples)
    pre, data, image, outside = _preprocess(volume, spec)
    target = IntensityParams.from_dict(spec.target_intensity)
    total = total_sq = None
    for member, member_spec, active in zip(nets, specs, dropouts, strict=True):
        for k in range(per_net):
            if method == "mc":
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(k)
                    pred = _predict(member, image, spec, device, batch_size, amp_dtype, TTA_VIEWS[0], active)
            else:  # tta: the k-th view; ensemble: one plain view per network
                pred = _predict(member, image, spec, device, batch_size, amp_dtype, TTA_VIEWS[k])
            _check_finite(pred, volume)
            hu = _calibrated(pre.invert(pred, data["image"], target, volume), member_spec)
            x = np.asarray(hu.array, dtype=np.float64)
            total = x if total is None else total + x
            total_sq = x * x if total_sq is None else total_sq + x * x
    samples = per_net * len(nets)
    mean = total / samples
    std = np.sqrt(np.maximum(total_sq / samples - mean * mean, 0.0))
    if outside is not None:  # set, not predicted: air with no spread
        mean[outside], std[outside] = CT_RANGE[0], 0.0
    return Volume(mean.astype(np.float32), hu.affine, source=hu.source), Volume(
        std.astype(np.float32), hu.affine, source=hu.source
    )


def _batch_size(batch_size: int | None, device: torch.device) -> int:
    """``batch_size`` checked, or the device's default when None."""
    if batch_size is None:
        return DEFAULT_BATCH_SIZE.get(device.type, 8)
    return require_int("--batch-size", batch_size, 1, 4096, error=InputError)


def _uncertainty_plan(
    nets: list[nn.Module], method: str, samples: int, sources: list[str] | None = None
) -> tuple[int, list[list[nn.Module]]]:
    """Check an uncertainty request against its networks (``--model`` first, then the ``--ensemble`` members): the
    number of predictions each network makes (``ensemble``: one) and, per network, the dropout layers that Monte Carlo
    sampling keeps on."""
    require_choice("--uncertainty", method, UNCERTAINTY_METHODS, error=InputError)
    sources = sources or ["the model"] + [f"ensemble member {i}" for i in range(1, len(nets))]
    if method == "ensemble":
        if len(nets) < 2:
            raise InputError("--uncertainty ensemble needs other checkpoints beside --model: pass them with --ensemble")
        samples = 1
    else:
        require_int("--samples", samples, 2, len(TTA_VIEWS) if method == "tta" else 256, error=InputError)
    dropouts = [[m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)] for net in nets]
    for source, layers in zip(sources, dropouts, strict=True):
        if method == "mc" and not layers:
            raise InputError(
                f"{source}: --uncertainty mc needs a network with dropout layers (the pix2pix U-Net has them unless "
                "model.dropout is 0; CycleGAN's ResNet and the baselines have none); use --uncertainty tta"
            )
    return samples, dropouts


def _preprocess(
    volume: Volume, spec: TranslatorSpec
) -> tuple[Preprocessor, dict[str, Any], torch.Tensor, np.ndarray | None]:
    """The preprocessor, its output, the network's input (1, X, Y, Z), and the voxels that will be air (see
    :func:`_outside`). An MR's body mask serves both its intensity scaling and the air mask: computed once."""
    name = volume.source or "input volume"
    task = get_task(spec.task)
    thin = [axis for axis, n in enumerate(volume.shape) if n == 1]
    if thin and thin != [axial_axis(volume.affine)]:
        raise InputError(
            f"{name}: one sagittal or coronal slice (shape {volume.shape}); the model translates axial slices: "
            "give it an axial slice or the volume"
        )
    check_modality(volume, spec.source_kind, name, f"this model translates {task.source_role} images ({spec.task})")
    body = body_mask(volume.array, "mr", volume.affine) if spec.source_kind == "mr" else None
    intensity = intensity_for(spec.source_kind, volume.array, volume.affine, source=name, mask=body)
    pre = Preprocessor(spacing=spec.spacing, divisible=(spec.divisor, spec.divisor, 1))
    data = pre(volume, intensity, keep_mask=False)  # no crop to the body: no mask needed
    return pre, data, data["image"].as_tensor().float(), _outside(volume, spec, body)


def _released(image: Any) -> Any:
    """A stand-in for the preprocessed image that :meth:`Preprocessor.invert` reads only the shape, metadata and
    applied operations of: a zero-stride view of one value, so the image's memory can go before the inversion."""
    from monai.data import MetaTensor

    stand_in = MetaTensor(torch.zeros(1, dtype=image.dtype).expand(image.shape), meta=dict(image.meta))
    stand_in.applied_operations = list(image.applied_operations)
    return stand_in


def _calibrated(out: Volume, spec: TranslatorSpec) -> Volume:
    """``out`` (target units) through the checkpoint's intensity calibration, when it has one (calibration.py)."""
    if spec.calibration is not None:
        out.array = apply_calibration(out.array, spec.calibration)
    return out


def _uncalibrated(spec: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's spec without its calibration: what ensemble members must share (each keeps its own map)."""
    return {k: v for k, v in spec.items() if k != "calibration"}


def _outside(volume: Volume, spec: TranslatorSpec, body: np.ndarray | None = None) -> np.ndarray | None:
    """For a task that keeps air outside the body (synthesis, see ``Task.air_outside_body``), the voxels of the
    input's grid farther than ``transforms.BODY_MARGIN_MM`` from its body outline (``body``, its mask, when already
    computed); else None."""
    if not get_task(spec.task).air_outside_body:
        return None
    return outside_body(volume.array, spec.source_kind, volume.affine, mask=body)


def _predict(
    net: nn.Module,
    image: torch.Tensor,
    spec: TranslatorSpec,
    device: torch.device,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    view: tuple[bool, int, int],
    active: list[nn.Module] | None = None,
) -> torch.Tensor:
    """The network's prediction for every slice of ``image`` (1, X, Y, Z), seen through ``view`` and brought back;
    the layers in ``active`` (dropout, for MC sampling) stay in training mode."""
    depth = image.shape[-1]
    pred = torch.full_like(image, float("nan"))  # a slice the loop missed could never pass as a result
    was_training = net.training
    net.eval()
    for m in active or []:
        m.train(True)
    offsets = torch.arange(-spec.context, spec.context + 1)
    flip, dx, dy = view
    try:
        for z0 in range(0, depth, batch_size):
            zs = torch.arange(z0, min(z0 + batch_size, depth))
            idx = torch.clamp(zs[:, None] + offsets[None, :], 0, depth - 1)  # (b, 2k+1)
            batch = image[0][:, :, idx].permute(2, 3, 0, 1).to(device)  # (b, 2k+1, X, Y)
            if dx or dy:  # the volume is padded with background, so what rolls over the edge is air
                batch = torch.roll(batch, shifts=(dx, dy), dims=(2, 3))
            if flip:
                batch = torch.flip(batch, dims=[2])
            # channels-last input (the convolutions follow the input's layout; the weights are left as they are):
            # faster on a CPU in float32 and bf16 (docs/benchmarks.md, "Translation")
            out = _forward(net, batch.contiguous(memory_format=torch.channels_last), amp_dtype, device)
            if flip:
                out = torch.flip(out, dims=[2])
            if dx or dy:
                out = torch.roll(out, shifts=(-dx, -dy), dims=(2, 3))
            pred[0, :, :, z0 : z0 + len(zs)] = out[:, 0].permute(1, 2, 0).float().cpu()
    finally:
        net.train(was_training)
    return pred


def _check_finite(pred: torch.Tensor, volume: Volume) -> None:
    # slab by slab: isfinite of a whole float volume makes temporaries of about 1.7 times its size
    bad = sum(int((~torch.isfinite(pred[..., z : z + SLAB])).sum()) for z in range(0, pred.shape[-1], SLAB))
    if bad:
        raise CheckpointError(
            f"{volume.source or 'input volume'}: the model produced {bad} NaN or infinite values; the checkpoint is "
            "broken (training diverged?), train it again"
        )


def _forward(net: nn.Module, batch: torch.Tensor, amp_dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    if amp_dtype is None:
        return net(batch)
    with torch.autocast(device.type, dtype=amp_dtype):
        return net(batch).float()


def _options_record(tta: bool, uncertainty: str | None, samples: int) -> str:
    """The options that change a translation's voxels, as the manifest records them (e.g. ``tta`` or
    ``uncertainty=mc samples=8``)."""
    if uncertainty is not None:
        return f"uncertainty={uncertainty}" + (f" samples={samples}" if uncertainty in ("tta", "mc") else "")
    return "tta" if tta else "plain"


def _check_folder_options(
    fmt: str, batch_size: int | None, precision: str, tta: bool | None, uncertainty: str | None, ensemble: list | None
) -> None:
    require_choice("--format", fmt, ("nifti", "dicom"), error=InputError)
    if batch_size is not None:
        require_int("--batch-size", batch_size, 1, 4096, error=InputError)
    require_choice("--precision", precision, ("auto", "fp32", "bf16"), error=InputError)
    if ensemble and uncertainty is None:
        raise InputError(
            "--ensemble CKPT... needs --uncertainty: ensemble (one prediction per model), or tta or mc (each model's "
            "views or dropout samples, pooled)"
        )
    if uncertainty is not None and tta:
        raise InputError("--tta and --uncertainty: --uncertainty tta already averages over flips (and shifts)")


def _load_ensemble(
    ensemble: list[str | Path], digests: list[str], model: Path, ckpt: dict[str, Any], dev: torch.device
) -> tuple[list[torch.nn.Module], list[TranslatorSpec]]:
    """The other members of an ensemble (``digests``: the sha256 of ``model`` and then of each member): each a
    different model of the same task and preprocessing."""
    members, member_specs = [], []
    for other, other_digest in zip(ensemble, digests[1:], strict=True):
        if digests.count(other_digest) > 1:
            raise InputError(
                f"{other}: the same model as another member of the ensemble (sha256 {other_digest[:16]}); an ensemble "
                "needs different models (e.g. trained with other seeds): the same one twice adds no spread"
            )
        other_ckpt = load_checkpoint(other)
        if _uncalibrated(other_ckpt["spec"]) != _uncalibrated(ckpt["spec"]):
            raise InputError(
                f"{other}: not the task and preprocessing of {model} (its translator spec differs); an ensemble needs "
                "models trained with the same data settings"
            )
        members.append(build_inference_net(other_ckpt, dev, source=str(other)))
        member_specs.append(TranslatorSpec.from_dict(other_ckpt["spec"]))
    return members, member_specs


def _folder_precision(ckpt: dict[str, Any], precision: str, dev: torch.device, index: int) -> PrecisionChoice:
    """What a folder is translated in: under torchrun rank 0 decides, and every rank computes alike."""
    from medtranslate.runtime.distributed import from_rank0, is_distributed

    chosen = None
    if index == 0 or not is_distributed():
        chosen = choose_precision(precision, dev) if get_kind(ckpt["kind"]).network else NO_NETWORK
    return from_rank0(chosen)


def _write_dicom(target: Path, hu: Volume, case: Any, task: Any, kind: str, digest: str) -> None:
    """The output as a DICOM CT series: in the source's patient, study and frame of reference when the input was a
    DICOM series, else in a study of its own that says there was no patient context."""
    from medtranslate import __version__
    from medtranslate.io.dicom import source_context
    from medtranslate.io.files import write_dicom_series

    what = task.output_name
    if case.series_uid:
        context = source_context(case.path, case.series_uid)
    else:
        context = {"0008|1030": f"{what} of {case.case_id} from a non-DICOM file (no patient context)"}
    write_dicom_series(
        target,
        hu,
        modality="CT",
        series_description=f"{what} (medtranslate)",
        overwrite=True,
        context=context,
        patient_id=case.case_id,
        comments=f"{what}: computed by medtranslate {__version__} ({kind}, checkpoint sha256 {digest[:16]}) from "
        f"{case.label}; not an acquired scan",
    )


# length: the command's steps in order (every option checked before any work, the model and its ensemble, precision,
# the cases), then the two things run_cases needs: a case's outputs and its work
def translate_folder(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    fmt: str = "nifti",
    tta: bool | None = None,
    shard: str | None = None,
    progress: bool = True,
    precision: str = "auto",
    uncertainty: str | None = None,
    samples: int = 8,
    ensemble: list[str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Translate every case of a file or folder into ``output``; resumable, shardable, never touching inputs.

    Writes ``<case>_sct.nii.gz`` (MR -> CT) or ``<case>_denoised.nii.gz`` (low-dose CT) as int16 HU clipped to
    [-1024, 3071] on the input's exact grid (with ``uncertainty``, the mean of the predictions, ``samples`` per model
    for tta and mc, and their standard deviation in HU as ``<case>_sct_std.nii.gz``, see
    :func:`translate_with_uncertainty`), and ``manifest.csv`` (``manifest.shardIofN.csv`` when sharded), rewritten
    after every case. Cases whose output exists are skipped unless ``overwrite``; they keep the checkpoint hash of the
    model that made them. ``tta``: average over a left-right flip; None: as the checkpoint says (``model.tta`` at
    training; not with ``uncertainty``, whose views include the flip). Every option is checked before any work.

    Returns:
        The manifest rows.
    """
    from medtranslate.io.cases import select_cases
    from medtranslate.io.files import read_case, write_nifti
    from medtranslate.runtime.batch import prepare_output_folder, run_cases
    from medtranslate.runtime.distributed import merge_shards, shard_manifest, shard_of

    model, inp, out = Path(model), Path(input), Path(output)
    _check_folder_options(fmt, batch_size, precision, tta, uncertainty, ensemble)
    index, count = shard_of(shard)
    dev = resolve_device(device)
    batch_size = _batch_size(batch_size, dev)
    ckpt = load_checkpoint(model)
    spec = TranslatorSpec.from_dict(ckpt["spec"])
    task = get_task(spec.task)
    if tta is None:
        tta = spec.tta and uncertainty is None
        if tta:
            logger.info(
                "averaging each slice over a left-right flip, as the model was trained to be used (--no-tta: one view)"
            )
    require_exists(inp, "--input")
    net = build_inference_net(ckpt, dev, source=str(model))
    digest = sha256(model)
    digests = [digest, *(sha256(p) for p in ensemble or [])]
    members, member_specs = _load_ensemble(ensemble or [], digests, model, ckpt, dev)
    if uncertainty is not None:
        _uncertainty_plan([net, *members], uncertainty, samples, [str(model), *map(str, ensemble or [])])
    prepare_output_folder(inp, out)
    chosen = _folder_precision(ckpt, precision, dev, index)
    logger.info(
        "precision %s (%s), batches of %d slices; %s",
        chosen.precision,
        chosen.reason,
        batch_size,
        describe_machine(dev),
    )
    cases = sorted(select_cases(inp, task.input_roles, "input").values(), key=lambda c: c.case_id)[index::count]
    suffix = task.output_suffix

    def outputs(case: Any) -> list[Path]:
        targets = [out / f"{case.case_id}_{suffix}.nii.gz"]
        if uncertainty is not None:
            targets.append(out / f"{case.case_id}_{suffix}_std.nii.gz")
        return targets + ([out / f"{case.case_id}_{suffix}_dicom"] if fmt == "dicom" else [])

    def work(case: Any, targets: list[Path]) -> None:
        if uncertainty is None:
            result = translate_volume(
                net, read_case(case), spec, dev, batch_size=batch_size, tta=tta, amp_dtype=chosen.amp_dtype
            )
        else:
            result, std = translate_with_uncertainty(
                net,
                read_case(case),
                spec,
                uncertainty,
                dev,
                batch_size,
                chosen.amp_dtype,
                samples,
                members,
                member_specs,
            )
            write_nifti(targets[1], std.array, std.affine, np.float32, overwrite=True)
        hu = np.clip(result.array, -1024, 3071, out=result.array)  # in place: the result is this case's own
        if fmt == "dicom":
            _write_dicom(targets[-1], Volume(hu, result.affine), case, task, ckpt["kind"], digest)
        write_nifti(targets[0], hu, result.affine, np.int16, overwrite=True)

    rows = run_cases(
        cases,
        shard_manifest(out, index, count),
        outputs,
        work,
        overwrite=overwrite,
        progress=progress,
        extra={  # everything that changes the voxels: a case made otherwise is refused, not skipped as if made so
            "checkpoint_sha256": digest,
            "precision": chosen.precision,
            "options": _options_record(tta, uncertainty, samples),
            "ensemble_sha256": ";".join(digests[1:]),
        },
        desc="translate",
    )
    merge_shards(out, index, count)
    return rows
