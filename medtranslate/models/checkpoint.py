"""The checkpoint format: what a file holds, saving it atomically, loading it safely, rebuilding its network.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (dict, list, tuple, str, int,
float, bool, None), so it loads with ``torch.load(..., weights_only=True)``: loading never runs code.
:func:`save_checkpoint`
converts numpy values and refuses anything else before writing, so a run cannot produce a file that its own loader
refuses. Keys: ``format``, ``kind``, ``config``, ``spec`` (:class:`TranslatorSpec`), ``in_channels``, ``model``
(``nets``, ``optimizers``, ...), ``schedule``, ``epoch``, ``batch_in_epoch``, ``step``, ``best_mae``, ``rng``,
``history``, ``epoch_losses``, ``split``, and ``state_sha256``: the checksum of all the others, checked at loading
(with the archive's CRCs), so a file damaged or altered after it was written is refused, never translated with.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtranslate.core.atomic import atomic_output
from medtranslate.core.checks import show
from medtranslate.core.errors import CheckpointError, ConfigError
from medtranslate.core.kinds import MODEL_KINDS, get_kind, model_class
from medtranslate.core.tasks import TASKS
from medtranslate.models.calibration import check_calibration

__all__ = ["CHECKPOINT_FORMAT", "TranslatorSpec", "plain", "save_checkpoint", "load_checkpoint", "build_inference_net"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TranslatorSpec:
    """What inference needs to reproduce training's preprocessing and undo its scaling."""

    task: str  # a key of tasks.TASKS
    source_kind: str  # mr | ct
    target_intensity: dict[str, Any]  # IntensityParams.to_dict() of the target (CT)
    context: int = 0
    divisor: int = 1
    spacing: tuple[float, float, float] | None = None
    # the output's intensity calibration (calibration.py), fitted after training when model.calibration asks for it
    calibration: dict[str, Any] | None = None
    # translate averages over a left-right flip unless told otherwise (model.tta; False in older checkpoints)
    tta: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing"] = list(self.spacing) if self.spacing else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TranslatorSpec:
        return cls(
            task=d["task"],
            source_kind=d["source_kind"],
            target_intensity=dict(d["target_intensity"]),
            context=int(d.get("context", 0)),
            divisor=int(d.get("divisor", 1)),
            spacing=tuple(float(s) for s in d["spacing"]) if d.get("spacing") else None,
            calibration=check_calibration(d.get("calibration")),
            tta=bool(d.get("tta", False)),
        )


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with numpy scalars and arrays turned into Python values and tensors; anything else is refused.

    Raises:
        TypeError: a value that ``torch.load(weights_only=True)`` would refuse (a programming error, not user input).
    """
    if isinstance(value, np.generic):  # before the Python types: np.str_ and np.float64 subclass str and float
        return value.item()
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = plain(k, where)
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__} cannot be stored in a checkpoint")
            out[key] = plain(v, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be stored in a checkpoint (only tensors and plain values load "
        "safely)"
    )


def state_sha256(value: Any) -> str:
    """SHA-256 of a checkpoint's contents (every key, value, tensor dtype, shape and byte) in a fixed order, without
    its own ``state_sha256`` entry: stored at saving, checked at loading."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(v.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            keys = sorted((k for k in v if k != "state_sha256"), key=lambda k: (type(k).__name__, str(k)))
            h.update(f"D{len(keys)}".encode())
            for k in keys:
                h.update(f"K{type(k).__name__}:{k}".encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"{type(v).__name__[0]}{len(v)}".encode())
            for item in v:
                feed(item)
        else:
            h.update(f"V{type(v).__name__}:{v!r}".encode())

    feed(value)
    return h.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (made :func:`plain`) atomically: a crash or a full disk never leaves a half-written file.

    The file holds the SHA-256 of its contents (``state_sha256``), which :func:`load_checkpoint` checks.
    """
    path = Path(path)
    state = plain(state)
    state["state_sha256"] = state_sha256(state)
    with atomic_output(path) as tmp:
        try:
            torch.save(state, str(tmp))
        except RuntimeError as exc:  # torch's zip writer reports a failed write (e.g. a full disk) as a RuntimeError
            raise OSError(f"torch.save failed: {' '.join(str(exc).split())[:120]}; is the disk full?") from exc
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a medtranslate checkpoint safely (``weights_only=True``: no arbitrary objects are unpickled) and check it.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, refused as unsafe, or holds an unknown kind or task.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    _check_archive(path)
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused: the file holds a Python object ({unsafe.group(1)[:80]}) besides tensors and plain "
                "values, and "
                "loading it could run code hidden in the file; medtranslate checkpoints hold no such objects: use one "
                "made by "
                "'medtranslate train', and load other files only if you trust who made them"
            ) from exc
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a PyTorch file, or corrupt); use a checkpoint made by "
            "'medtranslate train'"
        ) from exc
    except Exception as exc:  # torch raises many types for files that are not zip archives or are truncated
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({first[:160]}); the file is corrupt, truncated or of another program"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("spec"), dict):
        raise CheckpointError(
            f"{path}: not a medtranslate checkpoint (format {CHECKPOINT_FORMAT} expected); train one with "
            "'medtranslate train'"
        )
    stored = ckpt.get("state_sha256")
    if stored is not None and stored != state_sha256(ckpt):
        raise CheckpointError(
            f"{path}: its contents do not match the checksum stored when it was written (sha256 of the state); the "
            "file was changed or damaged since: use another copy, or train again"
        )
    if ckpt.get("kind") not in MODEL_KINDS:
        raise CheckpointError(
            f"{path}: unknown model kind {show(ckpt.get('kind'))}; expected one of: {', '.join(MODEL_KINDS)}"
        )
    if ckpt["spec"].get("task") not in TASKS:
        raise CheckpointError(
            f"{path}: unknown task {show(ckpt['spec'].get('task'))}; expected one of: {', '.join(TASKS)}"
        )
    try:
        spec = TranslatorSpec.from_dict(ckpt["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the checkpoint's preprocessing record is incomplete ({type(exc).__name__}: {show(str(exc))})"
        ) from exc
    if spec.source_kind not in ("mr", "ct") or spec.source_kind != TASKS[spec.task].source_kind:
        raise CheckpointError(f"{path}: source kind {show(spec.source_kind)} does not fit task {spec.task}")
    return ckpt


def _check_archive(path: Path) -> None:
    """Refuse a checkpoint whose zip archive fails its own CRC-32 checks (torch.load does not verify them)."""
    if not zipfile.is_zipfile(path):
        return  # torch.load says what it is not
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (its archive is damaged: {type(exc).__name__}); use another copy"
        ) from exc
    if bad is not None:
        raise CheckpointError(
            f"{path}: damaged: {bad} in its archive fails its CRC check (the file changed after it was written); use "
            "another copy, or train again"
        )


def build_inference_net(ckpt: dict[str, Any], device: torch.device, source: str = "checkpoint") -> nn.Module:
    """The source -> target network of a checkpoint, in eval mode on ``device``."""
    kind = ckpt.get("kind")
    try:
        if kind not in MODEL_KINDS:
            raise CheckpointError(
                f"{source}: unknown model kind {show(kind)}; expected one of: {', '.join(MODEL_KINDS)}"
            )
        net: nn.Module = model_class(get_kind(kind)).inference_net(ckpt, source)
        average = ckpt["model"].get("average")  # the weight average translates when training kept one
        net.load_state_dict(average["G"] if average else ckpt["model"]["nets"]["G"])
    except ConfigError as exc:  # our own message, whole: it names the setting this version does not know
        where = str(exc) if str(exc).startswith(source) else f"{source}: {exc}"  # the config's errors name it already
        raise CheckpointError(
            f"{where}; a checkpoint written by another version of medtranslate needs that version to translate, or "
            "train the model again with this one"
        ) from exc
    except (KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{source}: the networks cannot be rebuilt "
            f"({show(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})"
        ) from exc
    return net.to(device).eval()
