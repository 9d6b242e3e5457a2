"""SynthRAD metrics agree with independent scikit-image / scipy computations of the published definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medtranslate.core.errors import InputError
from medtranslate.evaluation.metrics import ldct_metrics, mae, ms_ssim, psnr, ssim, synthrad_metrics
from medtranslate.io.files import read_volume

from .conftest import SAMPLE

# ----------------------------------------------------------------------------------- independent references


def ref_prepare(img, mask, lo, hi):
    return np.where(mask, np.clip(img.astype(np.float64), lo, hi), lo) - lo


def ref_ssim_2023(pred, ref, mask, lo=-1024.0, hi=3000.0):
    """SynthRAD 2023 SSIM with scikit-image: full map, masked mean after a 3-voxel crop."""
    x, y = ref_prepare(ref, mask, lo, hi), ref_prepare(pred, mask, lo, hi)
    _, smap = structural_similarity(
        x,
        y,
        data_range=hi - lo,
        win_size=7,
        use_sample_covariance=True,
        gaussian_weights=False,
        K1=0.01,
        K2=0.03,
        full=True,
    )
    c = (slice(3, -3),) * 3
    return float(smap[c][mask[c]].mean())


def ref_psnr(pred, ref, mask, lo, hi):
    return float(
        peak_signal_noise_ratio(
            np.clip(ref[mask], lo, hi).astype(np.float64),
            np.clip(pred[mask], lo, hi).astype(np.float64),
            data_range=hi - lo,
        )
    )


def ref_ms_ssim_2025(pred, ref, mask):
    """SynthRAD 2025 MS-SSIM written from its definition with scipy (uniform_filter, fftconvolve)."""
    lo, hi = -1024.0, 3071.0
    gt, pr, mk = ref_prepare(ref, mask, lo, hi), ref_prepare(pred, mask, lo, hi), mask.astype(np.float64)
    pads = [(max(97 - n, 0) // 2, max(97 - n, 0) - max(97 - n, 0) // 2) for n in gt.shape]
    gt, pr, mk = (np.pad(a, pads, mode="edge") for a in (gt, pr, mk))
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    c1, c2 = (0.01 * 4095) ** 2, (0.03 * 4095) ** 2
    values = []
    for w in weights:
        ux, uy = uniform_filter(gt, 7), uniform_filter(pr, 7)
        cov = 343 / 342
        vx = cov * (uniform_filter(gt * gt, 7) - ux * ux)
        vy = cov * (uniform_filter(pr * pr, 7) - uy * uy)
        vxy = cov * (uniform_filter(gt * pr, 7) - ux * uy)
        sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
        lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
        con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
        stru = np.clip((vxy + c2 / 2) / (sx * sy + c2 / 2), 0, None)
        smap = lum**w * con**w * stru**w
        c = (slice(3, -3),) * 3
        values.append(float(smap[c][mk[c].astype(bool)].mean()))
        box = np.ones((2, 2, 2)) / 8
        gt, pr = (fftconvolve(a, box, mode="same")[::2, ::2, ::2] for a in (gt, pr))
        mk = mk[::2, ::2, ::2]
    return float(np.prod(np.clip(values, 0, 1)))


# ----------------------------------------------------------------------------------- test volumes


def random_case(shape, seed, border_mask=False):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 300, shape).clip(-1024, 3071)
    ref = uniform_filter(ref, 3) * 2.0  # some spatial structure
    ref[rng.random(shape) < 0.01] = 3050.0  # a few voxels above 3000: the editions' clipping differs
    pred = ref + rng.normal(0, 80, shape)
    idx = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.45 * shape[i])) ** 2 for i in range(3)))
    mask = r < 1.0
    if border_mask:
        mask[:2] = True  # touches the border: those voxels must be cropped
        mask[:, -1] = True
    return pred.astype(np.float32), ref.astype(np.float32), mask


@pytest.fixture(scope="module")
def phantom_case():
    ref = read_volume(SAMPLE / "mr2ct" / "sub-07" / "ct.nii.gz").array
    mask = read_volume(SAMPLE / "mr2ct" / "sub-07" / "mask.nii.gz").array > 0
    rng = np.random.default_rng(1)
    pred = (ref + rng.normal(0, 60, ref.shape) + 25).astype(np.float32)  # a biased, noisy "synthetic CT"
    return pred, ref.astype(np.int16), mask


CASES = [((23, 31, 17), 0, False), ((40, 33, 28), 1, True), ((12, 100, 9), 2, True), ((101, 98, 99), 3, False)]


@pytest.mark.parametrize("shape,seed,border", CASES)
def test_mae_psnr_ssim_agree_with_skimage_on_random_volumes(shape, seed, border):
    pred, ref, mask = random_case(shape, seed, border)
    m = synthrad_metrics(pred, ref, mask, edition=2023)
    assert m["mae"] == pytest.approx(float(np.abs(ref[mask].astype(np.float64) - pred[mask]).mean()), abs=1e-3)
    assert m["psnr"] == pytest.approx(ref_psnr(pred, ref, mask, -1024, 3000), abs=1e-3)
    assert m["ssim"] == pytest.approx(ref_ssim_2023(pred, ref, mask), abs=1e-4)
    m25 = synthrad_metrics(pred, ref, mask, edition=2025)
    assert m25["psnr"] == pytest.approx(ref_psnr(pred, ref, mask, -1024, 3071), abs=1e-3)
    assert m25["ssim"] == pytest.approx(ref_ssim_2023(pred, ref, mask, -1024, 3071), abs=1e-4)
    assert m25["psnr"] != pytest.approx(m["psnr"], abs=1e-3)  # the editions really differ here


@pytest.mark.parametrize("shape,seed,border", CASES[:3])
def test_ms_ssim_agrees_with_reference_implementation(shape, seed, border):
    pred, ref, mask = random_case(shape, seed, border)
    assert ms_ssim(pred, ref, mask) == pytest.approx(ref_ms_ssim_2025(pred, ref, mask), abs=1e-4)


def test_all_metrics_agree_on_phantom_ct(phantom_case):
    pred, ref, mask = phantom_case
    m = synthrad_metrics(pred, ref, mask)
    assert m["ssim"] == pytest.approx(ref_ssim_2023(pred, ref, mask), abs=1e-4)
    assert m["psnr"] == pytest.approx(ref_psnr(pred, ref, mask, -1024, 3000), abs=1e-3)
    assert m["ms_ssim"] == pytest.approx(ref_ms_ssim_2025(pred, ref, mask), abs=1e-4)
    assert 0.3 < m["ssim"] < 0.99 and 40 < m["mae"] < 80


def test_torch_path_matches_numpy_path(phantom_case):
    """CUDA tensors take the torch path; here it is forced on the CPU to check it against the numba kernels."""
    from medtranslate.evaluation import metrics as mod

    pred, ref, mask = phantom_case
    expected = synthrad_metrics(pred, ref, mask)
    p, r, m = (
        torch.as_tensor(pred, dtype=torch.float64),
        torch.as_tensor(ref, dtype=torch.float64),
        torch.as_tensor(mask),
    )
    ed = mod.EDITIONS[2023]
    scores = mod._score(p, r, m, ed, want_ms=True)
    ssim_t, ms_t = scores["ssim"], scores["ms_ssim"]
    assert ssim_t == pytest.approx(expected["ssim"], abs=1e-6)
    assert ms_t == pytest.approx(expected["ms_ssim"], abs=1e-6)
    # CPU tensors as inputs go through the same public functions
    assert synthrad_metrics(torch.as_tensor(pred), torch.as_tensor(ref), torch.as_tensor(mask)) == pytest.approx(
        expected
    )


def test_identical_volumes_score_perfectly(phantom_case):
    _, ref, mask = phantom_case
    m = synthrad_metrics(ref, ref, mask)
    assert (
        m["mae"] == 0
        and math.isinf(m["psnr"])
        and m["ssim"] == pytest.approx(1.0)
        and m["ms_ssim"] == pytest.approx(1.0)
    )


def test_metrics_ignore_voxels_outside_the_mask(phantom_case):
    pred, ref, mask = phantom_case
    spoiled = pred.copy()
    spoiled[~mask] = 3000  # garbage outside the body changes nothing
    assert synthrad_metrics(spoiled, ref, mask) == pytest.approx(synthrad_metrics(pred, ref, mask))


@pytest.mark.parametrize("bad,match", [("empty", "mask is empty"), ("nan", "NaN"), ("shape", "shapes differ")])
def test_bad_metric_inputs(bad, match):
    pred, ref, mask = random_case((20, 20, 20), 0)
    if bad == "empty":
        mask[:] = False
    elif bad == "nan":
        pred[3, 3, 3] = np.nan
    else:
        pred = pred[:-1]
    with pytest.raises(InputError, match=match):
        synthrad_metrics(pred, ref, mask)


def test_single_metric_functions_match_the_combined_one(phantom_case):
    pred, ref, mask = phantom_case
    m = synthrad_metrics(pred, ref, mask, edition=2025)
    assert mae(pred, ref, mask) == m["mae"]
    assert psnr(pred, ref, mask, edition=2025) == m["psnr"]
    assert ssim(pred, ref, mask, edition=2025) == pytest.approx(m["ssim"])
    assert ms_ssim(pred, ref, mask) == pytest.approx(m["ms_ssim"])
    with pytest.raises(InputError, match="edition"):
        psnr(pred, ref, mask, edition=2024)


def test_ldct_metrics_against_skimage_per_slice():
    rng = np.random.default_rng(3)
    ref = rng.normal(40, 30, (40, 36, 5))
    pred = ref + rng.normal(0, 10, ref.shape)
    m = ldct_metrics(pred, ref, axial_axis=2, window="head")
    lo, width = 0.0, 80.0
    ssims, psnrs = [], []
    for k in range(ref.shape[2]):
        a = np.clip((ref[:, :, k] - lo) / width, 0, 1)
        b = np.clip((pred[:, :, k] - lo) / width, 0, 1)
        _, smap = structural_similarity(a, b, data_range=1.0, win_size=7, use_sample_covariance=True, full=True)
        ssims.append(smap[3:-3, 3:-3].mean())
        psnrs.append(peak_signal_noise_ratio(a, b, data_range=1.0))
    assert m["ssim"] == pytest.approx(np.mean(ssims), abs=1e-6)
    assert m["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-6)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - ref) ** 2)), abs=1e-9)
    with pytest.raises(InputError, match="window"):
        ldct_metrics(pred, ref, window="brain")


def test_kernel_power_series_matches_libm_on_both_sides_of_its_floor():
    """The SIMD kernel's series for term ** weight (terms >= 0.5) and its libm fallback (below) against numpy."""
    from medtranslate.evaluation import _ssim_kernels as kern

    pred, ref, mask = random_case((30, 34, 26), 5)
    pred[:15] = np.random.default_rng(6).normal(0, 300, pred[:15].shape)  # unrelated there: low terms
    x32, y32 = ((a + 1024.0).astype(np.float32) for a in (pred, ref))  # what the kernel reads
    x, y = x32.astype(np.float64), y32.astype(np.float64)
    c1, c2 = (0.01 * 4095) ** 2, (0.03 * 4095) ** 2
    ux, uy = uniform_filter(x, 7), uniform_filter(y, 7)
    vx, vy, vxy = (
        (uniform_filter(a * b, 7) - ua * ub) * 343 / 342
        for a, b, ua, ub in ((x, x, ux, ux), (y, y, uy, uy), (x, y, ux, uy))
    )
    sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
    terms = (
        np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
        * np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
        * np.clip((vxy + c2 / 2) / (sx * sy + c2 / 2), 0, None)
    )
    inner = (slice(3, -3),) * 3
    t = terms[inner][mask[inner]]
    assert (t < kern.POW_SERIES_FLOOR).mean() > 0.05 and (t >= kern.POW_SERIES_FLOOR).mean() > 0.05
    for w in (0.0448, 0.2856, 0.3001, 0.2363, 0.1333):
        _, sb, cnt = kern.masked_ssim_sums(x32, y32, mask.view(np.uint8), 0.0, 0.0, False, c1, c2, c1, c2, w, 2)
        assert cnt == t.size and sb == pytest.approx(float((t**w).sum()), rel=1e-12)


def test_the_ssim_kernels_leave_torch_on_its_thread_count():
    """numba's parallel kernels run on torch's thread count and leave it as it was: with OMP_NUM_THREADS=1 (a loaded
    machine, a scheduler's limit) training stays on one thread after a validation's SSIM. Measured before: numba's
    OpenMP layer raised torch to NUMBA_NUM_THREADS (every core by default) for the rest of the process. A fresh process,
    because the thread counts are the environment's and this worker's are fixed by conftest."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from medtranslate.evaluation.metrics import ssim\n"
        "a = np.random.default_rng(0).random((40, 40, 20), dtype=np.float32) * 100\n"
        "ssim(a, a + 1, np.ones(a.shape, bool))\n"
        "import numba\n"
        "print(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)\n"
    )
    # OMP_NUM_THREADS alone, as a user sets it, and numba's own default (every core): the case that raised torch
    # (with MKL_NUM_THREADS=1 too, as conftest sets for pytest-xdist workers, torch stayed at one thread)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    torch_threads, numba_threads = (int(v) for v in run.stdout.split())
    assert numba_threads >= 2  # more cores than torch may use: else there is nothing to hold torch back from
    assert torch_threads == 1
