"""End-to-end pipelines: prepare -> train -> translate -> evaluate -> report, each stage skipped when complete.

A pipeline file is an experiment file (sections ``data``, ``model``, ``train``) with an optional ``pipeline``
section: ``baseline`` (intensity_map, classical or none) is trained, translated and evaluated on the same test cases
so the report shows the model beside it. RUN_DIR holds the resolved config, the split, both runs' checkpoints, the
translated volumes, ``eval/metrics.csv``, ``eval/summary.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .config import RunConfig, apply_overrides
from .errors import ConfigError, InputError
from .evaluate import evaluate_folder
from .io import atomic_write_text
from .slices import default_split_file, discover_pairs, load_split

__all__ = ["run_pipeline", "load_pipeline", "run_demo"]

logger = logging.getLogger(__name__)

BASELINES = {"mr2ct": "intensity_map", "ldct": "classical"}
REPO = Path(__file__).resolve().parents[1]


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The experiment config and the ``pipeline`` section (baseline) of a pipeline file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data, model, train, pipeline")
    raw = apply_overrides(raw, overrides or [])
    section = dict(raw.pop("pipeline", None) or {})
    unknown = set(section) - {"baseline", "simulate_dose"}
    if unknown:
        raise ConfigError(f"{path}: unknown key pipeline.{sorted(unknown)[0]}; valid keys of 'pipeline': baseline, simulate_dose")
    cfg = RunConfig.from_dict(raw, source=str(path))
    if section.get("simulate_dose") is not None and cfg.model.task != "ldct":
        raise ConfigError(f"{path}: pipeline.simulate_dose makes low-dose pairs from CT; it needs model.task: ldct")
    section.setdefault("baseline", BASELINES[cfg.model.task])
    if section["baseline"] not in ("intensity_map", "classical", "none", None):
        raise ConfigError(f"{path}: unknown pipeline.baseline {section['baseline']!r}; expected one of: classical, intensity_map, none")
    return cfg, section


def _stage(name: str, done: bool) -> bool:
    if done:
        logger.info("stage %s: complete, skipped", name)
    else:
        logger.info("stage %s: running", name)
    return not done


def _train_stage(cfg: RunConfig, run: Path, progress: bool) -> Path:
    from .train import Trainer

    marker = run / "DONE"
    if _stage(f"train {cfg.model.kind}", marker.exists()):
        resume = (run / "checkpoints" / "last.pt").exists()
        Trainer(cfg, run, resume=resume, progress=progress).fit()
        atomic_write_text(marker, time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return run / "checkpoints" / "best.pt"


def _translate_stage(ckpt: Path, pairs: dict[str, Any], test: list[str], out: Path, progress: bool) -> None:
    from .translate import translate_folder

    for cid in test:
        translate_folder(ckpt, pairs[cid].source.path, out, progress=False)
    logger.info("translated %d test cases into %s", len(test), out)


def _simulate(cfg: RunConfig, dose: float, folder: Path) -> RunConfig:
    """Low-dose / normal-dose pairs from every CT under data.root into ``folder`` (finished cases are kept)."""
    from .lowdose import simulate_lowdose_folder

    root = Path(cfg.data.root)
    found = default_split_file(root)
    split = cfg.data.split or (str(found) if found else None)
    logger.info("stage prepare: simulating %.0f %% dose pairs from %s", 100 * dose, root)
    rows = simulate_lowdose_folder(root, folder, dose, seed=cfg.train.seed, progress=False)
    if rows and all(r["status"] == "failed" for r in rows):
        raise InputError(f"{root}: no CT could be turned into low-dose pairs; first error: {rows[0]['error']}")
    return replace(cfg, data=replace(cfg.data, root=str(folder), split=split))


def run_pipeline(path: str | Path, out: str | Path, overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every stage of a pipeline file into ``out``; returns the model's evaluation summary (with the baseline's)."""
    cfg, section = load_pipeline(path, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")

    # prepare: optionally simulate low-dose pairs from the CTs, pair cases and fix the split (kept in RUN_DIR)
    if section.get("simulate_dose") is not None:
        cfg = _simulate(cfg, float(section["simulate_dose"]), out / "data")
    pairs = discover_pairs(cfg)
    split_path = out / "split.json"
    if _stage("prepare", split_path.exists()):
        split = load_split(cfg, sorted(pairs))
        if not split["test"]:
            split["test"] = list(split["val"])
            logger.warning("no test cases in the split: the validation cases are used as test cases")
        atomic_write_text(split_path, json.dumps(split, indent=2) + "\n")
    split = json.loads(split_path.read_text())
    missing = [c for c in split["test"] if c not in pairs]
    if missing:
        raise InputError(f"{split_path}: test cases {', '.join(missing)} have no pair under {cfg.data.root}")
    cfg = replace(cfg, data=replace(cfg.data, split=str(split_path)))
    test = split["test"]
    refs = {cid: pairs[cid].target for cid in test}
    masks = {cid: pairs[cid].mask for cid in test if pairs[cid].mask is not None}
    inputs = {cid: pairs[cid].source for cid in test}
    task = cfg.model.task

    # the baseline first, so the model's report can show it beside the model
    baseline_summary = None
    if section["baseline"] not in ("none", None):
        bcfg = replace(cfg, model=replace(cfg.model, kind=section["baseline"], generator=None, norm=None, gan_loss=None), train=replace(cfg.train, epochs=1))
        bcfg = RunConfig.from_dict(bcfg.to_dict())  # re-resolve the kind's defaults
        bckpt = _train_stage(bcfg, out / "baseline", progress)
        _translate_stage(bckpt, pairs, test, out / "baseline" / "translated", progress)
        bres = evaluate_folder(out / "baseline" / "translated", refs, out / "baseline" / "eval", mask=masks or None, input=inputs, task=task, figures=False, progress=False)
        baseline_summary = {"kind": section["baseline"], **bres.summary}

    ckpt = _train_stage(cfg, out / "train", progress)
    from .translate import OUTPUT_SUFFIX

    if _stage("translate", all((out / "translated" / f"{c}_{OUTPUT_SUFFIX[task]}.nii.gz").exists() for c in test)):
        _translate_stage(ckpt, pairs, test, out / "translated", progress)
    result = evaluate_folder(out / "translated", refs, out / "eval", mask=masks or None, input=inputs, task=task, progress=False,
                             extra_summary={"model": cfg.model.kind, "baseline": baseline_summary})
    # report: the evaluation report, with the baseline beside the model, at the top of RUN_DIR
    atomic_write_text(out / "report.html", (out / "eval" / "report.html").read_text())
    return result.summary


def run_demo(out: str | Path, quick: bool = False, progress: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """The demo of ``pipelines/demo.yaml``: MR -> CT and low-dose denoising on the sample data, each with its baseline."""
    spec_path = REPO / "pipelines" / "demo.yaml"
    if not spec_path.is_file():
        raise ConfigError(f"{spec_path}: demo definition not found; run the demo from a clone of the medtranslate repository")
    spec = yaml.safe_load(spec_path.read_text())
    results = []
    for entry in spec["pipelines"]:
        sets = {**entry.get("set", {}), **(spec.get("quick", {}).get("set", {}) if quick else {})}
        sets["data.root"] = str(REPO / "sample_data" / entry["data"])
        overrides = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
        name = Path(entry["file"]).stem
        logger.info("demo: %s", name)
        summary = run_pipeline(REPO / "pipelines" / entry["file"], Path(out) / name, overrides, progress=progress)
        results.append((name, summary))
    return results
