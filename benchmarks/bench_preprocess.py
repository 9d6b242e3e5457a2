"""Time `preprocess`'s registration (rigid + affine) and N4 on a 256 x 256 x 100 head, against simpler set-ups.

- Registration: MR (moved by a known rigid transform) onto CT with the project's settings (three-level pyramid,
  10 % regular sampling) against the same optimiser at full resolution only (no pyramid), which is what a
  hand-written script often does. Accuracy (mean residual over the head, mm) is printed beside the time.
- Real CT (when Debian's invesalius-examples is installed): the head CT moved by a known rigid transform of 10 degrees
  and 8 mm, registered back onto itself (one modality); rotation and mean residual are printed.
- N4: fitted on a copy shrunk 4x (the project's default) against a fit at full resolution (shrink 1), both with the
  same iterations; the white-matter coefficient of variation before and after is printed.

Both sides are measured in this run, on this machine; the ratio is the claim, the seconds are context.
Run: python benchmarks/bench_preprocess.py
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk
import torch

from medtranslate.data.phantom import LABELS, make_subject, misalign
from medtranslate.imaging.transforms import body_mask
from medtranslate.imaging.volume import Volume
from medtranslate.preprocessing import register as reg
from medtranslate.preprocessing.register import n4, register, to_sitk
from medtranslate.runtime.precision import describe_machine


def residual_mm(moved_by: sitk.Transform, found: sitk.Transform, points: list) -> float:
    return float(
        np.mean([np.linalg.norm(np.subtract(moved_by.TransformPoint(found.TransformPoint(p)), p)) for p in points])
    )


def real_ct_check() -> None:
    from medtranslate.core.errors import InputError
    from medtranslate.preprocessing.register import resample_onto
    from medtranslate.simulation.lowdose import find_invesalius_cranium, read_invesalius

    try:
        ct = read_invesalius(find_invesalius_cranium())
    except InputError as exc:
        print(f"real CT: skipped ({str(exc)[:80]}...)")
        return
    img = to_sitk(ct)
    known = sitk.Euler3DTransform()
    known.SetCenter(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.shape]))
    known.SetRotation(*np.radians((6.1, -5.16, 6.2)))  # 9.94 degrees about an oblique axis
    known.SetTranslation((5.0, -4.0, 4.8))  # 8.0 mm
    moved = resample_onto(ct, ct, known, background=-1024)
    mask = body_mask(ct.array, "ct", ct.affine)
    t0 = time.perf_counter()
    r = register(ct, moved, "rigid", fixed_mask=mask, moving_mask=body_mask(moved.array, "ct", moved.affine))
    seconds = time.perf_counter() - t0
    points = [img.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in np.argwhere(mask)[::2000]]
    m = np.array(known.GetMatrix()).reshape(3, 3) @ np.array(r.transform.GetMatrix()).reshape(3, 3)
    angle = float(np.degrees(np.arccos(np.clip((np.trace(m) - 1) / 2, -1, 1))))
    print(
        f"real head CT {ct.shape} {tuple(round(v, 3) for v in ct.spacing)} mm, moved by 9.94 degrees and 8.0 mm: "
        f"rigid in {seconds:.1f} s, residual rotation {angle:.3f} degrees, mean residual "
        f"{residual_mm(known, r.transform, points):.3f} mm"
    )


def main() -> None:
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    print(f"{describe_machine(torch.device('cpu'))}; SimpleITK threads {threads}")
    subject = make_subject(5, shape=(256, 256, 100), spacing=(0.9, 0.9, 1.7))
    moved, params = misalign(subject.mr, 3, 6.0, 6.0)
    print(f"volume {subject.ct.shape}, spacing {subject.ct.spacing}; MR moved by {params}")
    moved_by = sitk.Euler3DTransform()
    moved_by.SetCenter(
        to_sitk(subject.mr).TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in subject.mr.shape])
    )
    moved_by.SetRotation(*np.radians(params["rotation_deg_xyz"]))
    moved_by.SetTranslation(params["translation_mm_lps"])
    ct_mask = body_mask(subject.ct.array, "ct", subject.ct.affine)
    img = to_sitk(subject.ct)
    points = [img.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in np.argwhere(ct_mask)[::2000]]
    mr_mask = body_mask(moved.array, "mr", moved.affine)
    print(f"misalignment before: {residual_mm(moved_by, sitk.Euler3DTransform(), points):.2f} mm mean over the head")

    results = {}
    for label, shrink in (("pyramid 4-2-1 (medtranslate)", (4, 2, 1)), ("full resolution only", (1,))):
        reg.SHRINK = shrink
        t0 = time.perf_counter()
        r = register(subject.ct, moved, "affine", fixed_mask=ct_mask, moving_mask=mr_mask)
        seconds = time.perf_counter() - t0
        results[label] = seconds
        error = residual_mm(moved_by, r.transform, points)
        print(f"rigid + affine, {label:30s} {seconds:6.1f} s, residual {error:.2f} mm")
    reg.SHRINK = (4, 2, 1)
    base, ours = results["full resolution only"], results["pyramid 4-2-1 (medtranslate)"]
    print(f"registration speed-up: {base / ours:.1f}x")

    real_ct_check()

    biased_array = subject.mr.array.astype(np.float32) * (
        1.0 + 0.2 * (2 * np.indices(subject.mr.shape)[0] / (subject.mr.shape[0] - 1) - 1)
    )
    biased = Volume(biased_array, subject.mr.affine)
    white = subject.labels == LABELS["white"]

    def cov(a: np.ndarray) -> float:
        return float(a[white].std() / a[white].mean())

    print(f"N4: white-matter CoV {cov(biased_array):.4f} with a +-20 % field")
    times = {}
    for shrink in (4, 1):
        t0 = time.perf_counter()
        corrected, _ = n4(biased, shrink=shrink)
        times[shrink] = time.perf_counter() - t0
        print(f"N4 shrink {shrink}: {times[shrink]:6.1f} s, white-matter CoV {cov(corrected.array):.4f}")
    print(f"N4 speed-up of shrink 4 over full resolution: {times[1] / times[4]:.1f}x")


if __name__ == "__main__":
    main()
