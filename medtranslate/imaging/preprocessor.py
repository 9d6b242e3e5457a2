"""The MONAI spatial chain used for training and inference, and its exact inverse.

A volume goes through: intensity scaling to [-1, 1] (background ends at -1), channel-first ``MetaTensor``,
``Orientationd("RAS")`` (axial slices are then spatial dim 2), optional ``Spacingd``, optional ``CropForegroundd``
to the body, and ``DivisiblePadd`` with the background value. :meth:`Preprocessor.invert` undoes the spatial part
with MONAI's own inverse (the prediction keeps its ``MetaTensor`` trace) and the intensity part with the stored
parameters, so the result has the input's exact shape and affine and is in the input's units (HU for CT).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForegroundd, DivisiblePadd, Orientationd, Spacingd

from medtranslate.core.errors import GeometryMismatchError
from medtranslate.imaging.transforms import BACKGROUND, IntensityParams, body_mask
from medtranslate.imaging.volume import Volume

__all__ = ["Preprocessor"]


def _handed_over(data: dict[str, Any]) -> dict[str, Any]:
    """A new dict with ``data``'s items; ``data`` is emptied, so the caller keeps no reference to them."""
    items = dict(data)
    data.clear()
    return items


class Preprocessor:
    """The MONAI spatial chain used for training and inference, and its exact inverse.

    Args:
        spacing: target voxel spacing in mm (RAS axes); None keeps the input spacing.
        crop_to_body: crop to the bounding box of the body mask (key "mask") plus ``margin`` voxels.
        divisible: pad every spatial size to a multiple of this (sizes the network accepts); 1 for none.
        margin: crop margin in voxels.
    """

    def __init__(
        self,
        spacing: tuple[float, float, float] | None = None,
        crop_to_body: bool = False,
        divisible: int | tuple[int, int, int] = 1,
        margin: int = 4,
    ):
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else None
        self.crop_to_body = crop_to_body
        self.divisible = divisible
        keys = ["image", "mask"]
        # allow_missing_keys: inversion replays the chain on the prediction alone.
        kw = {"keys": keys, "allow_missing_keys": True}
        chain: list[Any] = [Orientationd(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")), **kw)]
        if self.spacing is not None:
            chain.append(
                Spacingd(
                    **kw, pixdim=self.spacing, mode=("bilinear", "nearest"), padding_mode="border", dtype=np.float32
                )
            )
        if crop_to_body:
            chain.append(CropForegroundd(**kw, source_key="mask", margin=margin, allow_smaller=True))
        if divisible != 1:
            chain.append(DivisiblePadd(**kw, k=divisible, mode="constant", value=BACKGROUND))
        self.chain = Compose(chain)

    def __call__(
        self, volume: Volume, intensity: IntensityParams, mask: np.ndarray | None = None, keep_mask: bool = True
    ) -> dict[str, MetaTensor]:
        """Scale intensities and apply the spatial chain.

        Args:
            keep_mask: also return the body mask on the preprocessed grid (inference without cropping does not
                need it, which saves two volume-sized copies).

        Returns:
            {"image": MetaTensor (1, X, Y, Z) in [-1, 1], "mask": MetaTensor (1, X, Y, Z) in {0, 1}}, RAS.
        """
        affine = torch.as_tensor(volume.affine, dtype=torch.float64)
        data = {}
        if keep_mask or self.crop_to_body:
            if mask is None:
                mask = body_mask(volume.array, intensity.kind, volume.affine)
            data["mask"] = MetaTensor(torch.as_tensor(mask, dtype=torch.float32)[None], affine=affine.clone())
        image = intensity.forward_in_place(np.array(volume.array, dtype=np.float32))  # one copy, scaled in place
        data["image"] = MetaTensor(torch.from_numpy(image)[None], affine=affine.clone())
        del image
        # the chain gets the only reference to the scaled copy, so each transform's input is freed once it has made
        # its output (orienting and padding a large volume otherwise held three copies at once)
        out = self.chain(_handed_over(data))
        if "mask" in out:
            out["mask"] = out["mask"].clamp_min(0)  # DivisiblePadd pads the mask with BACKGROUND too; keep it binary
        if not keep_mask:
            out.pop("mask", None)
        return out

    def invert(
        self, prediction: torch.Tensor, reference: MetaTensor, intensity: IntensityParams, original: Volume
    ) -> Volume:
        """Bring a prediction made in the preprocessed space back to ``original``'s grid and to source units.

        Args:
            prediction: (1, X, Y, Z) or (X, Y, Z) tensor on the preprocessed grid, in [-1, 1].
            reference: the preprocessed "image" ``MetaTensor`` (its trace of applied operations is replayed).
            intensity: how the target modality was scaled.
            original: the input volume whose grid the result must have.
        """
        pred = prediction.detach().to("cpu", torch.float32)
        if pred.ndim == 3:
            pred = pred[None]
        if tuple(pred.shape[1:]) != tuple(reference.shape[1:]):
            raise GeometryMismatchError(
                f"prediction shape {tuple(pred.shape[1:])} differs from the preprocessed input "
                f"{tuple(reference.shape[1:])}"
            )
        meta = MetaTensor(pred, meta=dict(reference.meta))
        meta.applied_operations = [dict(op) for op in reference.applied_operations]
        with torch.no_grad():
            restored = self.chain.inverse({"image": meta})["image"]
        array = restored.detach().cpu().numpy()[0].astype(np.float32, copy=False)
        if np.may_share_memory(array, pred.numpy()):  # scaled in place below: never in the caller's prediction
            array = array.copy()
        if array.shape != original.shape:
            raise GeometryMismatchError(
                f"{original.source}: inverted shape {array.shape} differs from the input's {original.shape}"
            )
        if not np.allclose(np.asarray(restored.affine, dtype=np.float64), original.affine, atol=1e-3):
            raise GeometryMismatchError(f"{original.source}: inverted affine differs from the input's")
        del restored, meta
        values = intensity.inverse_in_place(array)
        return Volume(
            array=values,
            affine=original.affine.copy(),
            source=original.source,
            format="memory",
        )
