"""Low-dose simulation: the Fourier-slice projector and FBP against scikit-image's radon + iradon, and fidelity.

1. Operators on 512 x 512 slices at the same geometry (parallel beam, one detector per pixel, 2 x 512 views over
   180 degrees): scikit-image ``radon`` + ``iradon`` (ramp) per slice against medtranslate's projector + FBP on a
   batch of slices; their agreement (relative L2 of the sinograms).
2. The whole simulator per 512 x 512 slice: the previous implementation (scikit-image radon, Poisson + electronic
   noise, two iradon: low and normal dose; reproduced here as the baseline) against ``simulate_lowdose`` (fan, the
   default, and parallel).
3. Rebinning (the bilinear interpolation between fan and parallel rays, on the default scanner's full turn): the torch
   expression it was (reproduced here as the baseline) against the compiled kernel, on the same slices; the results
   must be equal to the bit.
4. Fidelity on a real head CT (Debian's invesalius-examples, if installed: ``apt-get install invesalius-examples``):
   mean absolute and mean signed difference between the normal-dose image and the original inside the body, noise in
   the brain, for the previous and the current simulator; a figure (``--figure``) of the original, both normal-dose
   images, their differences (+-20 HU) and the low-dose image. The data is GPL-2: the figure is written, never
   committed.

Both sides of every ratio run in this process, on this machine, which is named first.
Run: python benchmarks/bench_lowdose.py [--slices 8] [--figure runs/bench_lowdose.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.ndimage import zoom
from timing import best_time

from medtranslate.core.errors import InputError
from medtranslate.data.phantom import make_subject
from medtranslate.imaging.volume import Volume
from medtranslate.runtime.precision import describe_machine
from medtranslate.simulation.ctproj import ParallelBeam, Projector
from medtranslate.simulation.lowdose import (
    DEFAULT_ELECTRONIC_NOISE,
    DEFAULT_PHOTONS,
    MU_WATER_PER_MM,
    find_invesalius_cranium,
    read_invesalius,
    simulate_lowdose,
)


def previous_simulator(hu: np.ndarray, pixel_mm: float, dose: float, rng: np.random.Generator):
    """The simulator medtranslate had before (scikit-image radon/iradon, parallel, 2 x size views): the baseline."""
    from skimage.transform import iradon, radon

    size = hu.shape[0]
    mu = np.clip(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0, None)
    theta = np.linspace(0.0, 180.0, 2 * size, endpoint=False)
    p = radon(mu * pixel_mm, theta=theta, circle=False)
    incident = DEFAULT_PHOTONS * dose
    counts = rng.poisson(incident * np.exp(-p)) + rng.normal(0.0, DEFAULT_ELECTRONIC_NOISE, p.shape)
    noisy = -np.log(np.maximum(counts, 1.0) / incident)

    def recon(s):
        mu_r = iradon(s, theta=theta, filter_name="ramp", circle=False, output_size=size) / pixel_mm
        return (mu_r / MU_WATER_PER_MM - 1.0) * 1000.0

    return recon(noisy), recon(p)


def head_slices(n: int, size: int | None) -> tuple[np.ndarray, float, str]:
    """n central axial slices (n, size, size) in HU of the real head CT (resized to ``size`` if given), else of the
    phantom; with the pixel spacing and what they are."""
    try:
        ct = read_invesalius(find_invesalius_cranium())
        z = ct.shape[2] // 2
        slab = ct.array[:, :, z - n // 2 : z - n // 2 + n].astype(np.float32).transpose(2, 1, 0)
        pixel, what = float(ct.affine[0, 0]), "real head CT (invesalius-examples)"
    except InputError:
        side = size or 256
        subject = make_subject(5, shape=(side, side, n), spacing=(0.9, 0.9, 2.0))
        slab, pixel, what = subject.ct.array.transpose(2, 1, 0).astype(np.float32), 0.9, "head phantom"
    if size and size != slab.shape[1]:
        factor = size / slab.shape[1]
        slab, pixel, what = zoom(slab, (1, factor, factor), order=1), pixel / factor, what + f" resized to {size}^2"
    return slab, pixel, what


def operators(slices: np.ndarray) -> None:
    from skimage.transform import iradon, radon

    n, size = slices.shape[0], slices.shape[1]
    mu = np.clip(MU_WATER_PER_MM * (1.0 + slices / 1000.0), 0.0, None).astype(np.float64)
    theta = np.linspace(0.0, 180.0, 2 * size, endpoint=False)
    t_radon, ref = best_time(lambda: radon(mu[0], theta=theta, circle=False))
    t_iradon, _ = best_time(lambda: iradon(ref, theta=theta, filter_name="ramp", circle=False, output_size=size))
    projector = Projector(size, ParallelBeam(2 * size, ref.shape[0]), batch=n)
    x = torch.from_numpy(mu)
    projector.forward(x[:1])  # warm-up (plans, threads)
    t_fwd, sino = best_time(lambda: projector.forward(x), 2)
    t_fbp, _ = best_time(lambda: projector.fbp(sino), 2)
    agree = np.linalg.norm(sino[0].numpy() - ref.T) / np.linalg.norm(ref)
    print(f"\n1. operators, {size}^2, {2 * size} views over 180 deg, {ref.shape[0]} detectors (per slice)")
    print(f"   scikit-image radon {t_radon:.3f} s + iradon {t_iradon:.3f} s = {t_radon + t_iradon:.3f} s")
    fwd, fbp = t_fwd / n, t_fbp / n
    print(f"   medtranslate forward {fwd:.3f} s + FBP {fbp:.3f} s = {fwd + fbp:.3f} s  (batch of {n} slices)")
    print(f"   speed-up {(t_radon + t_iradon) / (fwd + fbp):.1f}x; sinograms agree to {agree:.2%} (relative L2)")
    if torch.cuda.is_available():
        gpu = Projector(size, ParallelBeam(2 * size, ref.shape[0]), device="cuda")
        gpu.forward(x[:1])
        t_g, s_g = best_time(lambda: gpu.forward(x), 2)
        t_gb, _ = best_time(lambda: gpu.fbp(s_g), 2)
        print(f"   CUDA (torchkbnufft) forward {t_g / n:.3f} s + FBP {t_gb / n:.3f} s per slice")


def torch_interp(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, periodic_rows: bool) -> torch.Tensor:
    """The baseline: the four neighbours as four gathers of every slice, each weighed and summed in torch."""
    b, r, c = values.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.long(), c0.long()
    flat = values.reshape(b, -1)
    out = torch.zeros((b,) + rows.shape, dtype=values.dtype)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        ri = r0 + dr
        ri = ri % r if periodic_rows else ri.clamp(0, r - 1)
        for dc, wc in ((0, 1 - fc), (1, fc)):
            ci = c0 + dc
            inside = (ci >= 0) & (ci < c)
            idx = (ri * c + ci.clamp(0, c - 1)).reshape(-1)
            out += flat[:, idx].reshape(out.shape) * (wr * wc * inside)
    return out


def rebinning(slices: np.ndarray, pixel_mm: float) -> None:
    from medtranslate.simulation.ctproj import FanBeam, _interp, fan_to_parallel, parallel_to_fan

    n, size = slices.shape[0], slices.shape[1]
    fan = FanBeam()
    turn = ParallelBeam.covering(size, 2 * min(fan.views, 4 * size), 0.5, 2 * np.pi)
    recon = ParallelBeam.covering(size, fan.views, fan.spacing_at_centre_mm / pixel_mm, 2 * np.pi)
    sino = torch.from_numpy(rng().random((n, turn.views, turn.detectors)))
    rays = parallel_to_fan(sino, turn, fan, pixel_mm)  # warm-up (the kernel's compile or cache load)
    import medtranslate.simulation.ctproj as ctproj

    print(f"\n3. rebinning a full turn, {n} slices of {size}^2 ({fan.views} x {fan.detectors} fan rays)")
    for name, step in (
        ("parallel -> fan", lambda: parallel_to_fan(sino, turn, fan, pixel_mm)),
        ("fan -> parallel", lambda: fan_to_parallel(rays, fan, recon, pixel_mm)),
    ):
        t_new, new = best_time(step, 3)
        ctproj._interp = torch_interp
        try:
            t_old, old = best_time(step, 3)
        finally:
            ctproj._interp = _interp
        same = "the same to the bit" if torch.equal(old, new) else "DIFFERENT"
        print(f"   {name}: torch {t_old:.3f} s, compiled {t_new:.3f} s ({t_old / t_new:.1f}x); {same}")


def as_volume(slices: np.ndarray, pixel_mm: float) -> Volume:
    return Volume(slices.transpose(1, 2, 0), np.diag([pixel_mm, pixel_mm, 2.0, 1.0]))


def simulators(slices: np.ndarray, pixel_mm: float) -> None:
    n, size = slices.shape[0], slices.shape[1]
    t_old, _ = best_time(lambda: previous_simulator(slices[0].astype(np.float64), pixel_mm, 0.25, rng()))
    print(f"\n2. whole simulator per {size}^2 slice (25 % dose; ours on {n} slices)")
    print(f"   previous (scikit-image, parallel, {2 * size} views): {t_old:.2f} s")
    for geometry in ("fan", "parallel"):
        t, _ = best_time(lambda: simulate_lowdose(as_volume(slices, pixel_mm), 0.25, geometry=geometry))
        print(f"   simulate_lowdose {geometry:8s}: {t / n:.3f} s  ({t_old / (t / n):.1f}x)")


def fidelity(slices: np.ndarray, pixel_mm: float, what: str, figure: str | None) -> None:
    n, size = slices.shape[0], slices.shape[1]
    print(f"\n3. fidelity on the {what}: {n} slices of {size}^2, {pixel_mm:.3f} mm pixels, 25 % dose")
    old = [previous_simulator(s.astype(np.float64), pixel_mm, 0.25, rng()) for s in slices]
    rows = [("previous", np.stack([o[0] for o in old]), np.stack([o[1] for o in old]))]
    for geometry in ("fan", "parallel"):
        ld, nd = simulate_lowdose(as_volume(slices, pixel_mm), 0.25, geometry=geometry)
        rows.append((geometry, ld.array.transpose(2, 0, 1), nd.array.transpose(2, 0, 1)))
    body, brain = slices > -500, (slices > 0) & (slices < 80)
    for name, ld, nd in rows:
        d = nd - slices
        print(
            f"   {name:9s} normal dose - original in the body: mean |d| {np.abs(d[body]).mean():5.2f} HU, "
            f"mean d {d[body].mean():+5.2f} HU; low-dose noise in the brain {np.std((ld - nd)[brain]):5.1f} HU"
        )
    if figure:
        draw(figure, slices[n // 2], [(name, ld[n // 2], nd[n // 2]) for name, ld, nd in rows])


def draw(path: str, orig: np.ndarray, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.3 * len(rows)))
    for r, (name, ld, nd) in enumerate(rows):
        panels = [
            (orig, "original", (-160, 240)),
            (nd, f"{name}: normal dose", (-160, 240)),
            (nd - orig, f"{name}: normal dose - original", (-20, 20)),
            (ld, f"{name}: 25 % dose", (-160, 240)),
        ]
        for ax, (img, title, (lo, hi)) in zip(axes[r], panels, strict=False):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{title} [{lo}, {hi}] HU", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"   figure: {path}")


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=8, help="slices per batch (default 8)")
    parser.add_argument("--size", type=int, default=512, help="slice size for the timings (default 512)")
    parser.add_argument("--figure", default=None, help="write the fidelity figure here (PNG)")
    args = parser.parse_args()
    print(describe_machine(torch.device("cpu")))
    slices, pixel_mm, what = head_slices(args.slices, args.size)
    print(f"timings on the {what}")
    operators(slices)
    simulators(slices, pixel_mm)
    rebinning(slices, pixel_mm)
    fidelity(*head_slices(args.slices, None), args.figure)


if __name__ == "__main__":
    main()
