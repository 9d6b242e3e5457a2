"""The HTML report: self-contained (figures embedded), every case listed with its status, baseline beside the model."""

from __future__ import annotations

import base64
import re

import numpy as np

from medtranslate.evaluation.report import case_figure, write_report
from medtranslate.imaging.volume import Volume

from .conftest import ct_like


def _rows():
    return [
        {"case": "a", "mae": 50.0, "psnr": 28.0, "status": "done", "error": ""},
        {"case": "b<script>", "status": "failed", "error": "b.nii.gz: cannot read as NIfTI; re-export it"},
    ]


def test_report_is_self_contained_and_escapes_what_it_shows(tmp_path):
    ref = Volume(ct_like(shape=(20, 22, 12)).astype(np.float32), np.diag([1.0, 1.2, 2.5, 1.0]))
    pred = Volume(ref.array + 30, ref.affine)
    mask = ref.array > -500
    summary = {
        "task": "mr2ct",
        "edition": 2023,
        "n_cases": 2,
        "n_done": 1,
        "n_failed": 1,
        "mask_source": "given",
        "metrics": {"mae": {"mean": 50.0, "std": 0.0, "median": 50.0, "min": 50.0, "max": 50.0, "n": 1}},
        "definitions": {"mae": "mean |ref - pred| in HU"},
        "model": "pix2pix",
        "baseline": {"kind": "intensity_map", "metrics": {"mae": {"mean": 80.0}}},
    }
    drawn = case_figure(tmp_path / "figures" / "a.png", "a", pred, ref, mask)
    figures = write_report(tmp_path, _rows(), summary, ["mae", "psnr"], {"a": drawn})
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert set(figures) == {"a", "_metrics"} and all(p.is_file() for p in figures.values())
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from a network
    assert "b&lt;script&gt;" in page and "<script>" not in page
    assert "cannot read as NIfTI" in page and "SynthRAD 2023" in page
    assert re.search(r"<th>pix2pix</th><th>intensity_map \(baseline\)</th>.*<td>mae</td><td>50</td><td>80</td>", page)
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left
