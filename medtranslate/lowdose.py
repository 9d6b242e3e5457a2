"""Low-dose CT simulation in the projection domain, the way the Mayo/AAPM low-dose challenge data was made.

Per axial slice: HU -> linear attenuation, forward projection (scikit-image ``radon``), Poisson counts with
``photons x dose`` incident photons per ray plus Gaussian electronic noise (the model of Zeng et al. 2015, IEEE TNS
62(5)), log, filtered back-projection (ramp filter), back to HU. The normal-dose counterpart is the same projection
and reconstruction without the added noise, so the two images of a pair differ only in noise.

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

from .checks import require_int, require_number
from .describe import check_modality
from .errors import InputError
from .io import Volume
from .transforms import CT_RANGE, axial_axis

__all__ = [
    "MU_WATER_PER_MM",
    "DEFAULT_PHOTONS",
    "DEFAULT_ELECTRONIC_NOISE",
    "simulate_lowdose",
    "axial_slab",
    "write_ct",
]

logger = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.0193
DEFAULT_PHOTONS = 1.0e5
# Clinical CT detects about 1e4 to 1e6 photons per ray; far above, Poisson sampling overflows (numpy's limit ~9e18).
MAX_PHOTONS = 1.0e10
DEFAULT_ELECTRONIC_NOISE = math.sqrt(10.0)  # standard deviation in counts
AIR_HU = -1000.0


def axial_slab(volume: Volume, start: int, stop: int) -> Volume:
    """Axial slices ``start:stop`` of a volume, with the affine moved so every voxel keeps its place in the world."""
    axis = axial_axis(volume.affine)
    index = [slice(None)] * 3
    index[axis] = slice(start, stop)
    shift = np.eye(4)
    shift[axis, 3] = start
    return Volume(volume.array[tuple(index)], volume.affine @ shift, source=volume.source)


def write_ct(path: str | Path, volume: Volume, overwrite: bool = False) -> Path:
    """Write a simulated CT as int16 HU clipped to the project's CT range."""
    from .io import write_nifti

    return write_nifti(path, np.clip(volume.array, *CT_RANGE), volume.affine, np.int16, overwrite=overwrite)


def _reconstruct(sino: np.ndarray, theta: np.ndarray, size: int, pixel_mm: float) -> np.ndarray:
    from skimage.transform import iradon

    mu = iradon(sino, theta=theta, filter_name="ramp", circle=False, output_size=size) / pixel_mm
    return (mu / MU_WATER_PER_MM - 1.0) * 1000.0


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


def simulate_slice(
    hu: np.ndarray,
    pixel_mm: float,
    dose: float,
    rng: np.random.Generator,
    photons: float = DEFAULT_PHOTONS,
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE,
    views: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One 2D slice in HU -> (low-dose, normal-dose) slices in HU, same shape."""
    from skimage.transform import radon

    h, w = hu.shape
    size = max(h, w)
    padded = np.full((size, size), AIR_HU, dtype=np.float64)
    top, left = (size - h) // 2, (size - w) // 2
    padded[top : top + h, left : left + w] = hu
    mu = np.clip(MU_WATER_PER_MM * (1.0 + padded / 1000.0), 0.0, None)
    theta = np.linspace(0.0, 180.0, views or 2 * size, endpoint=False)
    line_integrals = radon(mu * pixel_mm, theta=theta, circle=False)
    incident = photons * dose
    counts = rng.poisson(incident * np.exp(-line_integrals)) + rng.normal(0.0, electronic_noise, line_integrals.shape)
    counts = np.maximum(counts, 1.0)  # a ray with no detected photon: keep the log finite (as scanners clip)
    noisy = -np.log(counts / incident)
    nd = _reconstruct(line_integrals, theta, size, pixel_mm)[top : top + h, left : left + w]
    ld = _reconstruct(noisy, theta, size, pixel_mm)[top : top + h, left : left + w]
    return ld, nd


def simulate_lowdose(
    volume: Volume,
    dose: float,
    photons: float = DEFAULT_PHOTONS,
    electronic_noise: float = DEFAULT_ELECTRONIC_NOISE,
    seed: int = 0,
    name: str | None = None,
    views: int | None = None,
) -> tuple[Volume, Volume]:
    """Simulate a low-dose scan and its normal-dose counterpart from a CT volume, slice by axial slice.

    Args:
        volume: CT in HU, any orientation.
        dose: fraction of the full dose, in (0, 1].
        photons: incident photons per ray at full dose.
        electronic_noise: standard deviation of the Gaussian electronic noise, in counts.
        seed: the same seed gives the same noise.
        name: how to name the input in errors (default: its source path).

    Returns:
        (low-dose, normal-dose) volumes on the input's grid, float32 HU.
    """
    name = name or volume.source or "input"
    check_simulation_settings(dose, photons, electronic_noise, seed, views)
    check_modality(volume, "ct", name, "low-dose simulation needs a CT")
    axis = axial_axis(volume.affine)
    if volume.shape[axis] < 1:
        raise InputError(f"{name}: no axial slices")
    in_plane = [a for a in range(3) if a != axis]
    spacing = np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0))
    pixel_mm = float(np.mean(spacing[in_plane]))
    data = np.moveaxis(np.asarray(volume.array, dtype=np.float64), axis, 0)
    seeds = np.random.SeedSequence(seed).spawn(data.shape[0])
    ld, nd = np.empty_like(data, dtype=np.float32), np.empty_like(data, dtype=np.float32)
    for k in range(data.shape[0]):
        ld[k], nd[k] = simulate_slice(
            data[k], pixel_mm, dose, np.random.default_rng(seeds[k]), photons, electronic_noise, views
        )
    back = lambda a: np.moveaxis(a, 0, axis)  # noqa: E731
    return Volume(back(ld), volume.affine.copy(), source=volume.source), Volume(
        back(nd), volume.affine.copy(), source=volume.source
    )


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
) -> list[dict]:
    """Write ``<case>_ld.nii.gz`` and ``<case>_nd.nii.gz`` (int16 HU, the input's grid) for every CT case of a folder.

    Same batch safety as ``translate``: existing outputs are skipped, a bad case is recorded and the rest go on,
    ``manifest.csv`` is rewritten after every case. Each case's noise is seeded from ``seed`` and its id.
    """
    import zlib

    from .batch import prepare_output_folder, run_cases
    from .evaluate import select_cases
    from .io import read_case

    inp, out = Path(input), Path(output)
    check_simulation_settings(dose, photons, electronic_noise, seed)
    if not inp.exists():
        raise InputError(f"{inp}: no such file or folder; check --input")
    prepare_output_folder(inp, out)
    cases = sorted(select_cases(inp, ("ct", "nd", None), "CT").values(), key=lambda c: c.case_id)

    def outputs(case) -> list[Path]:
        return [out / f"{case.case_id}_ld.nii.gz", out / f"{case.case_id}_nd.nii.gz"]

    def work(case, targets: list[Path]) -> None:
        volume = read_case(case)
        case_seed = (seed * 1_000_003 + zlib.crc32(case.case_id.encode())) % 2**32
        ld, nd = simulate_lowdose(volume, dose, photons, electronic_noise, seed=case_seed, name=case.label)
        for vol, target in zip((ld, nd), targets):
            write_ct(target, vol, overwrite=True)

    return run_cases(
        cases,
        out / "manifest.csv",
        outputs,
        work,
        overwrite=overwrite,
        progress=progress,
        extra={"dose": dose, "seed": seed, "photons": photons},
        desc="simulate",
    )


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

    from .atomic import atomic_write_text

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
