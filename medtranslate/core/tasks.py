"""The translation tasks medtranslate knows, in one registry: roles, image kinds, outputs, baselines, metrics, defaults.

Every module asks :func:`get_task` instead of spelling out ``if task == "mr2ct"``: adding a task means adding one
entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medtranslate.core.errors import ConfigError

__all__ = ["Task", "TASKS", "get_task"]


@dataclass(frozen=True)
class Task:
    """What one task translates and how its results are judged.

    Attributes:
        name: the ``model.task`` / ``--task`` value.
        source_role, target_role: the roles (see ``io.ROLE_ALIASES``) of the input and the reference image.
        source_kind: how the source is scaled and checked: "mr" (robust percentiles) or "ct" (HU).
        output_suffix: ``<case>_<suffix>.nii.gz`` written by ``translate``.
        baseline: the non-learned model every trained one is shown beside.
        metrics: "synthrad" (3D MAE, PSNR, SSIM, MS-SSIM) or "ldct" (windowed slice SSIM, PSNR, RMSE).
        input_roles: roles accepted as the source image, in order of preference (None: a file naming no role).
        reference_roles: roles accepted as the reference image, in order of preference.
        defaults: per-section defaults measured for the task (docs/commands/train.md).
        air_outside_body: ``translate`` sets the output to air farther than ``transforms.BODY_MARGIN_MM`` from the
            input's body outline (synthesis: the network must not paint tissue where the input shows none).
        output_name: what an output is called in a DICOM series description and a bundle ("Synthetic CT").
        summary: the translation in a few words, for a bundle's metadata.
    """

    name: str
    source_role: str
    target_role: str
    source_kind: str
    output_suffix: str
    baseline: str
    metrics: str
    input_roles: tuple[str | None, ...]
    reference_roles: tuple[str | None, ...]
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    air_outside_body: bool = False
    output_name: str = ""
    summary: str = ""

    @property
    def roles(self) -> tuple[str, str]:
        return self.source_role, self.target_role

    @property
    def target_kind(self) -> str:
        return "ct"


# Denoising differs from synthesis in three ways (each measured on the sample data: docs/results.md, "Low-dose CT").
# Augmentation: rotation and scaling resample by bilinear interpolation, which averages neighbouring pixels and so
# removes part of the noise from the training input but not at test time; flips keep pixels as they are. Units: the
# noise the network must remove is ~40 HU, 0.02 of the [-1, 1] CT scale, too small a signal for a U-Net to leave the
# identity; fed HU / 100 (``residual``) it learns. Resolution: the pix2pix U-Net's first layer is a stride-2
# convolution, so no layer works at full resolution, where the noise is; ``full_res`` adds 3x3 convolutions there.
TASKS: dict[str, Task] = {
    "mr2ct": Task(
        name="mr2ct",
        source_role="mr",
        target_role="ct",
        source_kind="mr",
        output_suffix="sct",
        baseline="intensity_map",
        metrics="synthrad",
        input_roles=("mr", None),
        reference_roles=("ct", None),
        defaults={"data": {"rotate_deg": 5.0, "scale": 0.05}, "model": {"full_res": False, "residual": False}},
        air_outside_body=True,
        output_name="Synthetic CT",
        summary="MR -> synthetic CT",
    ),
    "ldct": Task(
        name="ldct",
        source_role="ld",
        target_role="nd",
        source_kind="ct",
        output_suffix="denoised",
        baseline="classical",
        metrics="ldct",
        input_roles=("ld", None),
        reference_roles=("nd", "ct", None),
        defaults={"data": {"rotate_deg": 0.0, "scale": 0.0}, "model": {"full_res": True, "residual": True}},
        output_name="Denoised CT",
        summary="low-dose CT -> denoised CT",
    ),
}


def get_task(name: object, where: str = "model.task") -> Task:
    """The task called ``name``; ``where`` names the setting in the error."""
    if not isinstance(name, str) or name not in TASKS:
        shown = repr(name) if len(repr(name)) <= 40 else repr(name)[:37] + "..."
        raise ConfigError(f"unknown {where} {shown}; expected one of: {', '.join(TASKS)}")
    return TASKS[name]
