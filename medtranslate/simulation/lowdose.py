"""Low-dose CT simulation in the projection domain, the way the Mayo/AAPM low-dose challenge data was made.

Per axial slice: HU -> linear attenuation, forward projection, Poisson counts with ``photons x dose`` incident
photons per ray plus Gaussian electronic noise (the model of Zeng et al. 2015, IEEE TNS 62(5)), log, filtered
back-projection (ramp filter), back to HU. The normal-dose image is the reconstruction of the noise-free projections
and the low-dose image adds the reconstruction of the noise (FBP is linear), so the two images of a pair differ only
in noise.

Geometry (``geometry``): ``fan`` (default) acquires with the fan beam of the Mayo/AAPM scanner (595 mm source to
isocentre, 1085.6 mm to the detector, 736 channels, 1152 views per turn;
:class:`~medtranslate.simulation.ctproj.FanBeam`) and rebins to parallel rays before filtering, as that scanner does;
``parallel`` acquires parallel rays (2 x the image size views over 180 degrees, detectors 1/sqrt(2) pixel apart).
Projection and reconstruction use the Fourier-slice projector of :mod:`medtranslate.simulation.ctproj` (band-limited,
batched over slices), far faster than scikit-image's radon + iradon at the same view count; speed and fidelity are
measured by ``benchmarks/bench_lowdose.py`` (docs/benchmarks.md).

Assumptions (stated, not measured): a monoenergetic beam at about 70 keV effective energy, where water attenuates
0.0193 / mm (NIST XCOM: mu/rho 0.193 cm^2/g); ``DEFAULT_PHOTONS`` = 1e5 incident photons per ray at full dose and
electronic noise variance 10 counts^2, values in the range used in sinogram-domain simulations after Zeng et al.;
square in-plane pixels (the mean in-plane spacing is used).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from medtranslate.core.checks import require_exists, require_int, require_number
from medtranslate.core.errors import InputError
from medtranslate.imaging.transforms import CT_RANGE, axial_axis, axial_slab
from medtranslate.imaging.volume import Volume, voxel_spacing
from medtranslate.io.describe import check_modality

__all__ = [
    "MU_WATER_PER_MM",
    "DEFAULT_PHOTONS",
    "DEFAULT_ELECTRONIC_NOISE",
    "simulate_lowdose",
    "simulate_normal_dose",
    "write_ct",
]

logger = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.0193
DEFAULT_PHOTONS = 1.0e5
# Clinical CT detects about 1e4 to 1e6 photons per ray; far above, Poisson sampling overflows (numpy's limit ~9e18).
MAX_PHOTONS = 1.0e10
DEFAULT_ELECTRONIC_NOISE = math.sqrt(10.0)  # standard deviation in counts
AIR_HU = -1000.0


def write_ct(path: str | Path, volume: Volume, overwrite: bool = False) -> Path:
    """Write a simulated CT as int16 HU clipped to the project's CT range."""
    from medtranslate.io.files import write_nifti

    return write_nifti(path, np.clip(volume.array, *CT_RANGE), volume.affine, np.int16, overwrite=overwrite)


def check_simulation_settings(
    dose: float, photons: float, electronic_noise: float, seed: int, views: int | None = None
) -> None:
    """Raise an InputError naming the option unless every simulation setting is a usable number."""
    require_number("--dose (a fraction of the full dose, e.g. 0.25)", dose, above=0, maximum=1, error=InputError)
    require_number(
        "--photons (incident photons per ray at full dose)", photons, minimum=1, maximum=MAX_PHOTONS, error=InputError
    )
    require_number("electronic noise (counts)", electronic_noise, minimum=0, error=InputError)
    require_int("--seed", seed, 0, 2**63 - 1, error=InputError)
    if views is not None:
        require_int("views", views, 1, 100_000, error=InputError)


GEOMETRIES = ("fan", "parallel")
PARALLEL_DETECTOR_PX = 1 / math.sqrt(2)
SLICE_BATCH = 8  # slices per projector call (FINUFFT's batch of transforms)


class _Simulator:
    """Projectors for one slice size and pixel spacing."""

    def __init__(self, size: int, pixel_mm: float, geometry: str, views: int | None, device: torch.device):
        from medtranslate.simulation.ctproj import FanBeam, ParallelBeam, Projector

        self.geometry, self.pixel_mm = geometry, pixel_mm
        if geometry == "parallel":
            # detectors 1/sqrt(2) pixel apart: their Nyquist reaches the image's diagonal frequencies, so
            # reconstructing noise-free projections gives the image back (one per pixel loses the corners of its
            # spectrum, and the round trip then blurs the phantom's edges)
            g = ParallelBeam.covering(size, views or 2 * size, PARALLEL_DETECTOR_PX)
            self.fine = Projector(size, g, device, batch=SLICE_BATCH)
            return
        self.fan = FanBeam(views=views or FanBeam.views)
        # noise-free projections at half the fan's spacing at the centre (at most half a pixel) and up to twice its
        # view rate (half a turn, mirrored to a full one), so that fan rays drawn from them by linear interpolation
        # lose little; 4 x size views over 180 degrees keep the arc between views under a pixel at the image's edge
        fine_px = min(self.fan.spacing_at_centre_mm / 2 / pixel_mm, 0.5)
        fine_views = min(self.fan.views, 4 * size)
        self.fine = Projector(size, ParallelBeam.covering(size, fine_views, fine_px), device, batch=SLICE_BATCH)
        recon = ParallelBeam.covering(size, self.fan.views, self.fan.spacing_at_centre_mm / pixel_mm, 2 * math.pi)
        self.recon = Projector(size, recon, device, batch=SLICE_BATCH)

    def acquire(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, N) attenuation (1/mm) -> (noise-free reconstruction in 1/mm, line integrals as acquired)."""
        from medtranslate.simulation.ctproj import ParallelBeam, parallel_to_fan

        fine = self.fine.forward(mu) * self.pixel_mm
        clean = self.fine.fbp(fine) / self.pixel_mm
        if self.geometry == "parallel":
            return clean, fine
        g = self.fine.geometry
        full = torch.cat([fine, torch.flip(fine, dims=[-1])], dim=1)  # p(theta + pi, t) = p(theta, -t)
        turn = ParallelBeam(2 * g.views, g.detectors, g.detector_px, span=2 * math.pi)
        return clean, parallel_to_fan(full, turn, self.fan, self.pixel_mm)

    def reconstruct_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Noise in the acquired line integrals -> its image, in 1/mm."""
        from medtranslate.simulation.ctproj import fan_to_parallel

        if self.geometry == "parallel":
            return self.fine.fbp(noise) / self.pixel_mm
        rebinned = fan_to_parallel(noise, self.fan, self.recon.geometry, self.pixel_mm)
        return self.recon.fbp(rebinned) / self.pixel_mm


def _log_noise(
    line_integrals: np.ndarray, incident: float, electronic_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Noisy minus true line integrals: Poisson counts + Gaussian electronic noise, then the log (Zeng et al. 2015)."""
    counts = rng.poisson(incident * np.exp(-line_integrals)) + rng.normal(0.0, electronic_noise, line_integrals.shape)
    counts = np.maximum(counts, 1.0)  # a ray with no detected photon: keep the log finite (as scanners clip)
    return -np.log(counts / incident) - line_integrals


def simulate_lowdose(
    volume: Volume,
    dose: float,
    photons: float = DEFAULT_PHOTONS,
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE,
    seed: int = 0,
    name: str | None = None,
    views: int | None = None,
    geometry: str = "fan",
    device: str = "cpu",
) -> tuple[Volume, Volume]:
    """Simulate a low-dose scan and its normal-dose counterpart from a CT volume, slice by axial slice.

    Args:
        volume: CT in HU, any orientation.
        dose: fraction of the full dose, in (0, 1].
        photons: incident photons per ray at full dose.
        electronic_noise: standard deviation of the Gaussian electronic noise, in counts.
        seed: the same seed gives the same noise (each slice has its own stream, so batching does not matter).
        name: how to name the input in errors (default: its source path).
        views: projection views (fan: per turn, default 1152; parallel: over 180 degrees, default 2 x size).
        geometry: ``fan`` or ``parallel`` (module docstring).
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA runs torchkbnufft's NUFFT, the CPU FINUFFT).

    Returns:
        (low-dose, normal-dose) volumes on the input's grid, float32 HU.
    """
    ld, nd = _simulate(volume, dose, photons, electronic_noise, seed, name, views, geometry, device, noise=True)
    return ld, nd


def simulate_normal_dose(
    volume: Volume, name: str | None = None, views: int | None = None, geometry: str = "fan", device: str = "cpu"
) -> Volume:
    """The scanner's noise-free image of a CT volume: the normal-dose volume of :func:`simulate_lowdose`, to the bit,
    without the cost of simulating the noise."""
    _, nd = _simulate(volume, 1.0, DEFAULT_PHOTONS, DEFAULT_ELECTRONIC_NOISE, 0, name, views, geometry, device, False)
    return nd


def _simulate(
    volume: Volume,
    dose: float,
    photons: float,
    electronic_noise: float,
    seed: int,
    name: str | None,
    views: int | None,
    geometry: str,
    device: str,
    noise: bool,
) -> tuple[Volume | None, Volume]:
    from medtranslate.core.checks import require_choice
    from medtranslate.runtime.device import resolve_device

    name = name or volume.source or "input"
    check_simulation_settings(dose, photons, electronic_noise, seed, views)
    require_choice("geometry", geometry, GEOMETRIES, error=InputError)
    dev = resolve_device(device)
    check_modality(volume, "ct", name, "low-dose simulation needs a CT")
    axis = axial_axis(volume.affine)
    if volume.shape[axis] < 1:
        raise InputError(f"{name}: no axial slices")
    in_plane = [a for a in range(3) if a != axis]
    spacing = voxel_spacing(volume.affine)
    pixel_mm = float(np.mean(spacing[in_plane]))
    data = np.moveaxis(np.asarray(volume.array, dtype=np.float64), axis, 0)
    s, h, w = data.shape
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    sim = _Simulator(size, pixel_mm, geometry, views, dev)
    seeds = np.random.SeedSequence(seed).spawn(s)
    ld, nd = (np.empty(data.shape, np.float32) if noise else None), np.empty(data.shape, np.float32)
    to_hu = lambda mu: (mu.numpy() / MU_WATER_PER_MM - 1.0) * 1000.0  # noqa: E731
    for start in range(0, s, SLICE_BATCH):
        stop = min(start + SLICE_BATCH, s)
        padded = np.full((stop - start, size, size), AIR_HU)
        padded[:, top : top + h, left : left + w] = data[start:stop]
        mu = torch.from_numpy(np.clip(MU_WATER_PER_MM * (1.0 + padded / 1000.0), 0.0, None))
        clean, acquired = sim.acquire(mu)
        nd[start:stop] = to_hu(clean)[:, top : top + h, left : left + w]
        if not noise:
            continue
        line_noise = np.stack(
            [
                _log_noise(acquired[i].numpy(), photons * dose, electronic_noise, np.random.default_rng(seeds[k]))
                for i, k in enumerate(range(start, stop))
            ]
        )
        noisy = clean + sim.reconstruct_noise(torch.from_numpy(line_noise))
        ld[start:stop] = to_hu(noisy)[:, top : top + h, left : left + w]
    as_volume = lambda a: Volume(np.moveaxis(a, 0, axis), volume.affine.copy(), source=volume.source)  # noqa: E731
    return (as_volume(ld) if noise else None), as_volume(nd)


def read_invesalius(path: str | Path) -> Volume:
    """Read InVesalius' ``Cranium.inv3`` (gzipped tar: main.plist with spacing, matrix.dat int16 HU z-y-x)."""
    import plistlib
    import tarfile

    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()}
            plist = plistlib.loads(tar.extractfile(members["main.plist"]).read())
            raw = tar.extractfile(members["matrix.dat"]).read()
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise InputError(f"{path}: not a readable InVesalius project ({exc})") from exc
    shape = tuple(int(v) for v in plist.get("matrix", {}).get("shape", (108, 256, 256)))
    spacing = [float(v) for v in plist.get("spacing", (0.957, 0.957, 1.5))]
    array = np.frombuffer(raw, dtype=np.int16)
    n = int(np.prod(shape))
    if array.size < n:
        raise InputError(f"{path}: matrix.dat holds {array.size} voxels, expected {n} for shape {shape}")
    zyx = array[:n].reshape(shape)
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    return Volume(np.ascontiguousarray(zyx.transpose(2, 1, 0)), affine, source=str(path), format="invesalius")


def simulate_lowdose_folder(
    input: str | Path,
    output: str | Path,
    dose: float,
    seed: int = 0,
    photons: float = DEFAULT_PHOTONS,
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE,
    overwrite: bool = False,
    progress: bool = True,
    geometry: str = "fan",
    device: str = "cpu",
    shard: str | None = None,
) -> list[dict]:
    """Write ``<case>_ld.nii.gz`` and ``<case>_nd.nii.gz`` (int16 HU, the input's grid) for every CT case of a folder.

    Same batch safety as ``translate``: existing outputs are skipped, a bad case is recorded and the rest go on,
    ``manifest.csv`` is rewritten after every case. Each case's noise is seeded from ``seed`` and its id, so a case
    gets the same noise whichever process (``--shard I/N``, or a torchrun rank) simulates it.
    """
    import zlib

    from medtranslate.io.cases import select_cases
    from medtranslate.io.files import read_case
    from medtranslate.runtime.batch import prepare_output_folder, run_cases

    inp, out = Path(input), Path(output)
    from medtranslate.core.checks import require_choice
    from medtranslate.runtime.device import resolve_device
    from medtranslate.runtime.distributed import merge_shards, shard_manifest, shard_of

    check_simulation_settings(dose, photons, electronic_noise, seed)
    index, count = shard_of(shard)
    require_choice("--geometry", geometry, GEOMETRIES, error=InputError)
    require_choice("--device", device, ("auto", "cpu", "cuda"), error=InputError)
    resolve_device(device)
    require_exists(inp, "--input")
    prepare_output_folder(inp, out)
    cases = sorted(select_cases(inp, ("ct", "nd", None), "CT").values(), key=lambda c: c.case_id)[index::count]

    def outputs(case) -> list[Path]:
        return [out / f"{case.case_id}_ld.nii.gz", out / f"{case.case_id}_nd.nii.gz"]

    def work(case, targets: list[Path]) -> None:
        volume = read_case(case)
        case_seed = (seed * 1_000_003 + zlib.crc32(case.case_id.encode())) % 2**32
        ld, nd = simulate_lowdose(
            volume, dose, photons, electronic_noise, seed=case_seed, name=case.label, geometry=geometry, device=device
        )
        for vol, target in zip((ld, nd), targets, strict=True):
            write_ct(target, vol, overwrite=True)

    rows = run_cases(
        cases,
        shard_manifest(out, index, count),
        outputs,
        work,
        overwrite=overwrite,
        progress=progress,
        extra={"dose": dose, "seed": seed, "photons": photons, "geometry": geometry},
        desc="simulate",
    )
    merge_shards(out, index, count)
    return rows


INVESALIUS_GLOBS = (
    "/usr/share/invesalius*/**/Cranium.inv3",
    "/usr/share/doc/invesalius*/**/Cranium.inv3",
    "/usr/share/**/Cranium.inv3",
)


def find_invesalius_cranium() -> Path:
    """Locate ``Cranium.inv3`` of Debian's invesalius-examples package, or say how to install it."""
    import glob

    for pattern in INVESALIUS_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return Path(hits[0])
    raise InputError(
        "Cranium.inv3 not found: install Debian's invesalius-examples package (as root: apt-get update && apt-get "
        "install invesalius-examples), then run this again"
    )


def write_invesalius_pairs(
    out: str | Path, dose: float = 0.25, slabs: int = 3, seed: int = 0, overwrite: bool = False
) -> list[Path]:
    """Low-dose / normal-dose pairs from the real head CT of invesalius-examples (GPL-2 data: written, never committed).

    The single subject is cut into ``slabs`` axial slabs, each its own case (``cranium-1`` ...), with a
    ``split.json`` (first slabs train, then val, last test). Slabs of one head are not independent subjects:
    numbers on them show what the pipeline does on real CT texture, not how it generalises.
    """
    import json

    from medtranslate.core.atomic import atomic_write_text

    out = Path(out)
    ct = read_invesalius(find_invesalius_cranium())
    bounds = np.linspace(0, ct.shape[axial_axis(ct.affine)], slabs + 1).astype(int)
    written = []
    for i in range(slabs):
        slab = axial_slab(ct, int(bounds[i]), int(bounds[i + 1]))
        ld, nd = simulate_lowdose(slab, dose, seed=seed + i, name=f"{ct.source} slab {i + 1}")
        for name, vol in (("ld", ld), ("nd", nd)):
            written.append(write_ct(out / f"cranium-{i + 1}" / f"{name}.nii.gz", vol, overwrite=overwrite))
    ids = [f"cranium-{i + 1}" for i in range(slabs)]
    split = {"train": ids[: max(slabs - 2, 1)], "val": ids[max(slabs - 2, 1) : slabs - 1], "test": ids[slabs - 1 :]}
    return written + [atomic_write_text(out / "split.json", json.dumps(split, indent=2) + "\n")]
