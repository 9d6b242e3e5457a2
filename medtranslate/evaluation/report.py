"""Figures and a self-contained HTML report (images embedded; opens from disk with no server and no network)."""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from medtranslate.core.atomic import atomic_output, atomic_write_text
from medtranslate.imaging.volume import Volume, to_ras

__all__ = [
    "case_figure",
    "display_range",
    "embedded_png",
    "metrics_figure",
    "orthogonal_views",
    "save_figure",
    "warnings_of",
    "worse_than_baseline",
    "write_report",
]

logger = logging.getLogger(__name__)

CT_DISPLAY = (-1000.0, 1600.0)  # HU range shown for CT: air to dense bone
ERROR_MAX = 300.0  # HU at the top of the error colour bar (MR -> CT: errors of tens to hundreds of HU)
ERROR_MAX_LDCT = 100.0  # the same for denoising, whose errors are noise of a few tens of HU


def orthogonal_views(vol: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """The axial, coronal and sagittal planes through ``centre`` of a RAS-ordered array, each ready for imshow."""
    x, y, z = centre
    # images shown with origin="lower": first array axis horizontal after transpose
    return [vol[:, :, z].T, vol[:, y, :].T, vol[x, :, :].T]


def case_figure(
    path: Path,
    case: str,
    pred: Volume,
    ref: Volume,
    mask: np.ndarray,
    inp: Volume | None = None,
    ct_range: tuple[float, float] = CT_DISPLAY,
    error_max: float = ERROR_MAX,
) -> Path:
    """Axial, coronal and sagittal views through the body's centre: input, prediction, reference, |error| (HU).

    The CT images are shown from ``ct_range[0]`` to ``ct_range[1]`` HU (named in the title), the error from 0 to
    ``error_max`` HU.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, spacing = to_ras(pred.array, pred.affine)
    r, _ = to_ras(ref.array, ref.affine)
    m, _ = to_ras(mask.astype(np.uint8), ref.affine)
    centre = (
        tuple(int(round(c)) for c in np.argwhere(m > 0).mean(axis=0)) if m.any() else tuple(s // 2 for s in m.shape)
    )
    err = np.abs(p.astype(np.float32) - r.astype(np.float32)) * (m > 0)
    columns = []
    if inp is not None:
        i, _ = to_ras(inp.array, inp.affine)
        lo, hi = np.percentile(i, (0.5, 99.5)) if i.min() >= 0 else ct_range
        columns.append(("input", i, dict(cmap="gray", vmin=lo, vmax=hi)))
    columns += [
        ("prediction", p, dict(cmap="gray", vmin=ct_range[0], vmax=ct_range[1])),
        ("reference", r, dict(cmap="gray", vmin=ct_range[0], vmax=ct_range[1])),
        ("|error| (HU)", err, dict(cmap="magma", vmin=0, vmax=error_max)),
    ]
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    # each row as tall as its view is in mm for the width it is shown at, so a thin volume's coronal and sagittal
    # views keep their true aspect without leaving the rows between them empty
    nx, ny, nz = p.shape
    heights = [max(h, 0.15) for h in (ny * aspects[0] / nx, nz * aspects[1] / nx, nz * aspects[2] / ny)]
    fig, axes = plt.subplots(
        3,
        len(columns),
        figsize=(3.0 * len(columns), 3.0 * sum(heights) + 1.4),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for col, (title, vol, style) in enumerate(columns):
        for row, (view, aspect) in enumerate(zip(orthogonal_views(vol, centre), aspects, strict=True)):
            ax = axes[row, col]
            im = ax.imshow(view, origin="lower", aspect=aspect, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
            if col == 0:
                ax.set_ylabel(["axial", "coronal", "sagittal"][row], fontsize=10)
        if title.startswith("|error|"):
            fig.colorbar(im, ax=axes[:, col].tolist(), shrink=0.6, label="HU")
    fig.suptitle(f"{case}: CT shown from {ct_range[0]:g} to {ct_range[1]:g} HU", fontsize=11)
    save_figure(fig, path)
    return path


def uncertainty_figure(path: Path, case: str, std: np.ndarray, error: np.ndarray, mask: np.ndarray) -> Path:
    """Mean |error| against uncertainty: the mask voxels in ten bins of equal count by their standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(mask, dtype=bool)
    u, e = np.asarray(std, dtype=np.float64)[m], np.abs(np.asarray(error, dtype=np.float64))[m]
    order = np.argsort(u, kind="stable")
    bins = np.array_split(order, 10)
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot([u[b].mean() for b in bins], [e[b].mean() for b in bins], "o-", color="#4c72b0")
    ax.set_xlabel("uncertainty: standard deviation (HU)")
    ax.set_ylabel("mean |error| (HU)")
    ax.set_title(f"{case}: error against uncertainty (deciles)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def pair_free_figure(
    path: Path, case: str, inp: Volume, pred: Volume, body: np.ndarray, reference_hu: np.ndarray
) -> Path:
    """An output judged without its pair: the input and the output (axial, through the body's centre, with the
    input's body outline drawn on the output) and the output's HU distribution inside that outline against the
    reference cohort's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i, _ = to_ras(inp.array, inp.affine)
    p, _ = to_ras(pred.array, pred.affine)
    m, _ = to_ras(body.astype(np.uint8), inp.affine)
    z = int(round(np.argwhere(m > 0)[:, 2].mean())) if m.any() else m.shape[2] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    lo, hi = np.percentile(i, (0.5, 99.5))
    axes[0].imshow(i[:, :, z].T, origin="lower", cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title(f"{case}: input", fontsize=10)
    axes[1].imshow(p[:, :, z].T, origin="lower", cmap="gray", vmin=CT_DISPLAY[0], vmax=CT_DISPLAY[1])
    axes[1].contour(m[:, :, z].T, levels=[0.5], colors="#c44e52", linewidths=0.8)
    axes[1].set_title("output, input's body outline in red", fontsize=10)
    for ax in axes[:2]:
        ax.axis("off")
    bins = np.linspace(CT_DISPLAY[0], CT_DISPLAY[1], 131)
    axes[2].hist(reference_hu, bins=bins, density=True, histtype="step", color="#4c72b0", label="reference cohort")
    axes[2].hist(p[m > 0], bins=bins, density=True, histtype="step", color="#c44e52", label="output")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("HU inside the body", fontsize=9)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def wepl_figure(path: Path, case: str, maps: dict[float, np.ndarray], limit_mm: float = 10.0) -> Path:
    """Per gantry angle, WEPL(sCT) - WEPL(CT) of every ray (across) in every axial slice (up), in mm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(3.0 * len(maps), 3.6), squeeze=False)
    fig.subplots_adjust(bottom=0.18, top=0.82, right=0.85)
    for ax, (angle, diff) in zip(axes[0], maps.items(), strict=False):
        im = ax.imshow(diff.T, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-limit_mm, vmax=limit_mm)
        ax.set_title(f"gantry {angle:g} deg", fontsize=9)
        ax.set_xlabel("ray")
        ax.set_ylabel("axial slice")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="WEPL sCT - CT (mm)")
    fig.suptitle(f"{case}: proton range difference along parallel beams", fontsize=10)
    save_figure(fig, path)
    return path


def metrics_figure(path: Path, rows: list[dict[str, Any]], metric_names: list[str]) -> Path:
    """One panel per metric: its value for every scored case, with the mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    names = [n for n in metric_names if any(n in r and np.isfinite(r[n]) for r in done)]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        cases = [r["case"] for r in done if name in r and np.isfinite(r[name])]
        values = [r[name] for r in done if name in r and np.isfinite(r[name])]
        if len(values) <= LABELLED_CASES:  # a bar per case, named
            ax.bar(range(len(values)), values, color="#4c72b0")
            if values:
                ax.axhline(float(np.mean(values)), color="#c44e52", lw=1, label="mean")
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels(cases, rotation=60, fontsize=7)
            ax.set_title(name, fontsize=10)
        else:  # a cohort: thousands of tick labels made this figure the slowest part of evaluate; its distribution
            ax.hist(values, bins=min(50, max(10, len(values) // 20)), color="#4c72b0")
            ax.axvline(float(np.mean(values)), color="#c44e52", lw=1, label="mean")
            ax.set_xlabel(name, fontsize=9)
            ax.set_ylabel("cases", fontsize=9)
            ax.set_title(f"{name} ({len(values)} cases)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)


def embedded_png(path: Path) -> str:
    """An <img> tag holding the PNG itself, so an HTML page opens from disk with its figures."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return html.escape(str(value))


# which way is better, for the metrics a model is compared with its baseline on
BETTER = {
    "mae": "lower",
    "rmse": "lower",
    "psnr": "higher",
    "ssim": "higher",
    "ms_ssim": "higher",
    "w1": "lower",  # the measures without pairs (pairfree.py)
    "outline_dice": "higher",
}


def worse_than_baseline(summary: dict[str, Any]) -> list[str]:
    """The metrics (of :data:`BETTER`) on which the model's mean is worse than its baseline's."""
    base = (summary.get("baseline") or {}).get("metrics", {})
    worse = []
    for name, way in BETTER.items():
        if name not in summary["metrics"] or name not in base:
            continue
        model, other = summary["metrics"][name]["mean"], base[name]["mean"]
        if (model > other) if way == "lower" else (model < other):
            worse.append(name)
    return worse


def warnings_of(summary: dict[str, Any]) -> list[str]:
    """What a reader of a pipeline's results must not miss: a model or baseline the time cap left under-trained
    (``training``, from the run's history), and a model worse than its own baseline."""
    model = str(summary.get("model", "model"))
    base = summary.get("baseline") or {}
    out = [f"{model}: {summary['training']}"] if summary.get("training") else []
    if base.get("training"):
        out.append(f"{base['kind']} (baseline): {base['training']}")
    worse = worse_than_baseline(summary)
    if worse:
        out.append(f"{model} is worse than its baseline ({base['kind']}) on {', '.join(worse)}")
    return out


def _warnings_html(summary: dict[str, Any]) -> str:
    lines = warnings_of(summary)
    return "".join(f'<p class="failed"><b>Warning:</b> {html.escape(line)}</p>' for line in lines)


def _baseline_html(summary: dict[str, Any]) -> str:
    """The model's and the baseline's mean metrics side by side, when the summary carries a baseline."""
    base = summary.get("baseline")
    if not base:
        return ""
    names = [n for n in summary["metrics"] if n in base["metrics"] and not n.startswith("input_")]
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(summary['metrics'][n]['mean'])}</td><td>{_fmt(base['metrics'][n]['mean'])}</td></tr>"
        for n in names
    )
    model = html.escape(str(summary.get("model", "model")))
    return (
        f"<h2>Model and baseline</h2><p>Means over the same test cases.</p><table><tr><th>metric</th><th>{model}</th>"
        f"<th>{html.escape(str(base['kind']))} (baseline)</th></tr>{rows}</table>"
    )


def display_range(window: str | None) -> tuple[float, float]:
    """HU shown in the case figures: the CT display range, or for windowed (low-dose) metrics twice the scoring window
    (so structure just outside it stays visible)."""
    if not window:
        return CT_DISPLAY
    from medtranslate.evaluation.metrics import WINDOWS

    level, width = WINDOWS[window]
    return (level - width, level + width)


LABELLED_CASES = 40  # up to this many cases the metrics figure has a named bar per case, beyond it a histogram
EMBEDDED_CASES = 50  # up to this many cases report.html embeds every figure; beyond, it links to figures/ (2000 cases
# embedded made a 75 MB page)


def _cases_caption(summary: dict[str, Any]) -> str:
    if summary.get("evaluation") == "dose":
        return (
            "Per case and modality: three planes through the target's centre with the dose difference (sCT - CT) over "
            "the CT and the target's outline, gamma at 2 %/2 mm, and the DVHs of target and body on both."
        )
    if summary.get("evaluation") == "without pairs":
        return (
            "No reference of the same subject: each output beside its input, with the input's body outline, and its HU "
            "distribution inside that outline against the reference cohort's."
        )
    return (
        "Axial, coronal and sagittal views through the centre of the body mask; the error is |prediction - "
        "reference| inside the mask."
    )


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    metric_names: list[str],
    case_figures: dict[str, Path],
) -> dict[str, Path]:
    """Write the metrics figure and ``out/report.html`` with every figure embedded.

    ``case_figures``: each case's figure, drawn with :func:`case_figure` when the case was scored, so that no volume
    has to be kept until the report is written.
    """
    figures: dict[str, Path] = dict(case_figures)
    if any(r["status"] == "done" for r in rows):
        figures["_metrics"] = metrics_figure(out / "figures" / "metrics.png", rows, metric_names)

    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["metric", "mean", "std", "median", "min", "max", "n"])
    srows = "".join(
        f"<tr><td>{html.escape(n)}</td>"
        + "".join(f"<td>{_fmt(s[k])}</td>" for k in ["mean", "std", "median", "min", "max", "n"])
        + "</tr>"
        for n, s in summary["metrics"].items()
    )
    defs = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in summary.get("definitions", {}).items()
    )
    cols = ["case", *metric_names, "status", "error"]
    crow = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    case_figs = [(c, p) for c, p in figures.items() if c != "_metrics"]
    if len(rows) <= EMBEDDED_CASES:  # the report opens from disk alone, every figure in it
        figs = "".join(f"<h3>{html.escape(c)}</h3>{embedded_png(p)}" for c, p in case_figs)
    else:  # a cohort: one page of links, so the report's size and memory do not grow with the figures
        links = "".join(
            f'<li><a href="{html.escape(p.relative_to(out).as_posix())}">{html.escape(c)}</a></li>'
            for c, p in case_figs
        )
        figs = (
            f"<p>{len(rows)} cases: each case's figures are files in <code>figures/</code> beside this report "
            f"(embedded up to {EMBEDDED_CASES} cases); keep the folder together.</p><ul>{links}</ul>"
        )
    if summary.get("evaluation") == "dose":
        edition = "dose on the sCT against dose on the CT (one plan, optimised on the CT, recomputed on the sCT)"
    elif summary.get("evaluation") == "without pairs":
        edition = "judged without pairs, against a reference CT cohort"
    elif summary.get("edition"):
        edition = f"SynthRAD {summary['edition']}"
    else:
        edition = f"window {summary.get('window')}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medtranslate evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}
.failed{{color:#b00}}</style></head><body>
<h1>medtranslate evaluation</h1>
<p>Task <b>{html.escape(str(summary.get("task")))}</b>, {html.escape(edition)};
{summary["n_done"]} of {summary["n_cases"]} cases scored,
{summary["n_failed"]} failed. Mask: {html.escape(str(summary.get("mask_source")))}.</p>
{f"<p>Model trained in {html.escape(summary['trained_on'])}.</p>" if summary.get("trained_on") else ""}
{_warnings_html(summary)}
{_baseline_html(summary)}
<h2>Summary</h2><table><tr>{head}</tr>{srows}</table>
<h2>Definitions</h2><ul>{defs}</ul>
<h2>Per case</h2><table><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in cols)}</tr>{crow}</table>
{embedded_png(figures["_metrics"]) if "_metrics" in figures else ""}
<h2>Cases</h2><p>{html.escape(_cases_caption(summary))}</p>
{figs}
</body></html>
"""
    atomic_write_text(out / "report.html", page)
    return figures
