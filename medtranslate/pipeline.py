"""End-to-end pipelines: prepare -> train -> translate -> evaluate -> report, each stage skipped when complete.

A pipeline file is an experiment file (sections ``data``, ``model``, ``train``) with an optional ``pipeline``
section: ``baseline`` (intensity_map, classical or none) is trained, translated and evaluated on the same test cases
so the report shows the model beside it. RUN_DIR holds the resolved config, the split, both runs' checkpoints, the
translated volumes, ``eval/metrics.csv``, ``eval/summary.json`` and ``report.html``.

A run folder belongs to one config: running again with the same settings skips what is complete, and running with
other settings is refused (naming the settings that differ) unless ``overwrite``, which discards the earlier run's
results first. So no output is ever credited to settings that did not make it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from medtranslate.core.atomic import atomic_write_text
from medtranslate.core.checks import require_number, show
from medtranslate.core.config import ModelConfig, RunConfig, apply_overrides, config_differences, read_yaml
from medtranslate.core.errors import ConfigError, InputError
from medtranslate.core.kinds import get_kind
from medtranslate.core.tasks import get_task
from medtranslate.data.slices import (
    default_split_file,
    discover_cohorts,
    discover_pairs,
    load_split,
    read_split,
    split_cohorts,
)
from medtranslate.evaluation.evaluate import evaluate_folder, evaluate_without_pairs
from medtranslate.io.cases import Case, Cohorts, Pair

__all__ = ["run_pipeline", "load_pipeline", "find_pipeline", "shipped_pipelines"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# What a pipeline writes into RUN_DIR; --overwrite removes exactly these before starting again.
RUN_OUTPUTS = (
    "config.yaml",
    "split.json",
    "data",
    "prepared",
    "baseline",
    "train",
    "translated",
    "eval",
    "report.html",
)
# The keys of a pipeline file's ``pipeline`` section, with what they do (docs/configuration.md is made from this).
PIPELINE_KEYS = {
    "baseline": "the baseline trained, translated and evaluated beside the model: intensity_map, classical (non-local "
    "means) or none; default: the task's (intensity_map for mr2ct, classical for ldct)",
    "simulate_dose": "task ldct only: first simulate low-dose / normal-dose pairs at this dose fraction (0-1] from the "
    "CTs under data.root into RUN_DIR/data (simulate-lowdose), and train on them; default: none (the pairs are given)",
}


def shipped_pipelines() -> dict[str, Path]:
    """The pipeline files that come with the package (``pipelines/`` of the repository, ``medtranslate.pipelines``
    once installed), by file name."""
    import importlib.resources

    try:
        folder = importlib.resources.files("medtranslate.pipelines")
    except ModuleNotFoundError:  # a source tree used without installing: its pipelines/ folder
        return {p.name: p for p in sorted((REPO / "pipelines").glob("*.yaml"))}
    return {p.name: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")}


def find_pipeline(path: str | Path) -> Path:
    """A pipeline file: ``path`` when it exists, else the shipped pipeline of that name (``mr2ct_pix2pix`` or
    ``mr2ct_pix2pix.yaml``), so an installed medtranslate runs its pipelines from anywhere.

    Raises:
        ConfigError: neither a file nor the name of a shipped pipeline.
    """
    given = Path(path)
    if given.exists():
        return given
    name = given.name if given.suffix in (".yaml", ".yml") else f"{given.name}.yaml"
    shipped = shipped_pipelines()
    if given.parent == Path(".") and name in shipped:
        logger.info("pipeline %s: the shipped %s", path, shipped[name])
        return shipped[name]
    raise ConfigError(
        f"{path}: no such file; give a pipeline file, or the name of a shipped one: "
        f"{', '.join(n.removesuffix('.yaml') for n in shipped if n != 'demo.yaml')}"
    )


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The experiment config and the ``pipeline`` section (baseline, simulate_dose, prepare) of a pipeline file.

    A top-level ``prepare`` section (keys of :class:`~medtranslate.preprocessing.preprocess.PreprocessOptions`, e.g.
    ``prepare: {register: affine, n4: true}``) is returned as ``section["prepare"]``, already checked.
    """
    path = Path(path)
    raw = read_yaml(path, "pipeline file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data, model, train, pipeline; got {show(raw)}")
    raw = apply_overrides(raw, overrides or [])
    section = raw.pop("pipeline", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(
            f"{path}: section 'pipeline' must be a mapping (keys {', '.join(PIPELINE_KEYS)}), got {show(section)}"
        )
    section = dict(section)
    prepare = raw.pop("prepare", None)
    unknown = set(section) - set(PIPELINE_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key pipeline.{show(sorted(map(str, unknown))[0])}; valid keys of 'pipeline': "
            f"{', '.join(PIPELINE_KEYS)}"
        )
    cfg = RunConfig.from_dict(raw, source=str(path))
    if prepare is not None:
        section["prepare"] = _prepare_options(path, prepare)
    if section.get("simulate_dose") is not None:
        if get_task(cfg.model.task).source_kind != "ct":
            raise ConfigError(f"{path}: pipeline.simulate_dose makes low-dose pairs from CT; it needs model.task: ldct")
        require_number(f"{path}: pipeline.simulate_dose", section["simulate_dose"], above=0, maximum=1)
    section.setdefault("baseline", get_task(cfg.model.task).baseline)
    if section["baseline"] not in ("intensity_map", "classical", "none", None):
        raise ConfigError(
            f"{path}: unknown pipeline.baseline {show(section['baseline'])}; expected one of: classical, "
            "intensity_map, none"
        )
    return cfg, section


def _prepare_options(path: Path, prepare: Any) -> dict[str, Any]:
    from dataclasses import asdict, fields

    from medtranslate.preprocessing.preprocess import PreprocessOptions

    valid = [f.name for f in fields(PreprocessOptions)]
    if not isinstance(prepare, dict):
        raise ConfigError(f"{path}: section 'prepare' must be a mapping (keys {', '.join(valid)}), got {show(prepare)}")
    unknown = sorted(set(map(str, prepare)) - set(valid))
    if unknown:
        raise ConfigError(f"{path}: unknown key prepare.{show(unknown[0])}; valid keys: {', '.join(valid)}")
    try:
        options = asdict(PreprocessOptions(**_tuples(prepare)))
    except InputError as exc:
        raise ConfigError(f"{path}: prepare: {exc}") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}  # YAML-safe for config.yaml


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _prepare(cfg: RunConfig, options: dict[str, Any], folder: Path) -> RunConfig:
    """Run ``preprocess`` on data.root into ``folder`` and train on that (finished cases are kept)."""
    from medtranslate.preprocessing.preprocess import PreprocessOptions, preprocess_folder

    root = Path(cfg.data.root)
    logger.info("stage prepare: preprocessing %s into %s (%s)", root, folder, options)
    rows = preprocess_folder(root, folder, PreprocessOptions(**_tuples(options)), progress=False)
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed:
        logger.warning("prepare: case %s left out: %s", row["case"], row["error"])
    if rows and len(failed) == len(rows):
        raise InputError(f"{root}: no case could be preprocessed; first error: {rows[0]['error']}")
    return _data_from(cfg, folder)


def _claim_run_dir(out: Path, record: dict[str, Any], overwrite: bool, protected: list[Path]) -> None:
    """Make ``out`` the folder of this config: refuse one made with other settings unless ``overwrite``.

    ``overwrite`` removes only what the earlier run wrote (RUN_OUTPUTS; ``data`` and ``prepared`` only when its
    settings made them), only in a folder whose config.yaml a pipeline wrote, and never a path that holds one of
    ``protected`` (this run's data and pipeline file) or an input of the earlier run (its data.root, split, cache):
    then it refuses, and the message does not suggest ``--overwrite``.
    """
    saved_path = out / "config.yaml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; choose a folder for --out")
    if saved_path.is_file():
        try:
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            saved = None
        if not isinstance(saved, dict) or not {"data", "model", "train", "pipeline"} <= set(saved):
            raise ConfigError(
                f"{saved_path}: was not written by 'medtranslate run', so {out} is not a run folder; "
                "choose another --out (nothing was changed)"
            )
        diffs = config_differences(saved, record)
        if not diffs and not overwrite:
            atomic_write_text(saved_path, yaml.safe_dump(record, sort_keys=False))
            return
        targets = _earlier_outputs(out, saved)
        inputs = protected + _inputs_of(saved)
        held = [(t, p) for t in targets for p in inputs if p == t.resolve() or t.resolve() in p.parents]
        settings = (
            f" made with other settings ({'; '.join(diffs[:8])}"
            + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            + ")"
            if diffs
            else ""
        )
        if held:
            target, data = held[0]
            raise ConfigError(
                f"{out}: holds a run{settings}, and its {target.name}/ holds {data}, an "
                "input of that run or this one, which replacing the run would delete: choose another --out "
                "(nothing was changed)"
            )
        if not overwrite:
            raise ConfigError(
                f"{out}: holds a run{settings}; its results would be credited to these "
                "settings: pass --overwrite to discard them and run again, or choose another --out"
            )
        logger.warning("--overwrite: discarding the earlier run in %s", out)
        for target in targets:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    atomic_write_text(saved_path, yaml.safe_dump(record, sort_keys=False))


def _earlier_outputs(out: Path, saved: dict[str, Any]) -> list[Path]:
    """What the run recorded in ``saved`` wrote into ``out``: ``data`` and ``prepared`` only if its settings made them
    (otherwise a folder of that name is the user's)."""
    section = saved.get("pipeline") or {}
    names = [n for n in RUN_OUTPUTS if n not in ("data", "prepared")]
    if isinstance(section, dict) and section.get("simulate_dose") is not None:
        names.append("data")
    if isinstance(section, dict) and section.get("prepare") is not None:
        names.append("prepared")
    return [out / n for n in names if (out / n).exists() or (out / n).is_symlink()]


def _inputs_of(saved: dict[str, Any]) -> list[Path]:
    """The inputs a saved run config names (data.root, data.split, data.cache), resolved."""
    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    return [Path(str(data[k])).resolve() for k in ("root", "split", "cache") if data.get(k)]


def _stage(name: str, done: bool) -> bool:
    if done:
        logger.info("stage %s: complete, skipped", name)
    else:
        logger.info("stage %s: running", name)
    return not done


def _train_stage(cfg: RunConfig, run: Path, progress: bool) -> Path:
    from medtranslate.training.train import Trainer

    marker = run / "DONE"
    if _stage(f"train {cfg.model.kind}", marker.exists()):
        resume = (run / "checkpoints" / "last.pt").exists()
        Trainer(cfg, run, resume=resume, progress=progress).fit()
        atomic_write_text(marker, time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return run / "checkpoints" / "best.pt"


def _training_note(run: Path) -> str:
    """The note "stopped by train.max_minutes ... under-trained" when the time cap ended the run's training (the last
    row of its history.csv says so; a run resumed to its end has no note there), else ""."""
    import csv

    history = run / "history.csv"
    if not history.is_file():
        return ""
    with history.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (rows[-1].get("note") or "") if rows else ""


def _trained_on(ckpt: Path) -> str:
    """In what precision, on what device and how many threads the checkpoint was trained (each machine of a resumed
    run in turn; "" for a checkpoint from before this was recorded)."""
    from medtranslate.models.checkpoint import load_checkpoint

    return "; then ".join(load_checkpoint(ckpt).get("trained_on", []))


def _translate_stage(ckpt: Path, inputs: dict[str, Case], out: Path, progress: bool) -> None:
    from medtranslate.inference.translate import translate_folder

    rows = [row for case in inputs.values() for row in translate_folder(ckpt, case.path, out, progress=False)]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "refused")}
    logger.info("test cases into %s: %s", out, ", ".join(f"{n} {s}" for s, n in counts.items() if n))


def _simulate(cfg: RunConfig, dose: float, folder: Path) -> RunConfig:
    """Low-dose / normal-dose pairs from every CT under data.root into ``folder`` (finished cases are kept)."""
    from medtranslate.simulation.lowdose import simulate_lowdose_folder

    root = Path(cfg.data.root)
    logger.info("stage prepare: simulating %.0f %% dose pairs from %s", 100 * dose, root)
    rows = simulate_lowdose_folder(root, folder, dose, seed=cfg.train.seed, progress=False)
    if rows and all(r["status"] == "failed" for r in rows):
        raise InputError(f"{root}: no CT could be turned into low-dose pairs; first error: {rows[0]['error']}")
    return _data_from(cfg, folder)


def _data_from(cfg: RunConfig, folder: Path) -> RunConfig:
    """``cfg`` reading its cases from ``folder`` (made from data.root), keeping the split data.root had."""
    found = default_split_file(cfg.data.root)
    split = cfg.data.split or (str(found) if found else None)
    return replace(cfg, data=replace(cfg.data, root=str(folder), split=split))


@dataclass
class _Scoring:
    """How a pipeline scores its test cases: against their own targets (pairs), or, for a cohort run whose test
    cases have none, without pairs against the training target cohort (evaluate_without_pairs)."""

    task: str
    inputs: dict[str, Case]
    refs: dict[str, Case] | None = None
    masks: dict[str, Case] | None = None
    cohort: dict[str, Case] | None = None

    def evaluate(self, translated: Path, out: Path, figures: bool = True, extra_summary: Any = None) -> Any:
        if self.cohort is not None:
            return evaluate_without_pairs(
                translated, self.inputs, self.cohort, out, task=self.task, figures=figures, progress=False,
                extra_summary=extra_summary,
            )  # fmt: skip
        return evaluate_folder(
            translated, self.refs, out, mask=self.masks or None, input=self.inputs, task=self.task, figures=figures,
            progress=False, extra_summary=extra_summary,
        )  # fmt: skip


def _scoring(
    cfg: RunConfig,
    split: dict[str, list[str]],
    test: list[str],
    pairs: dict[str, Pair],
    cohorts: Cohorts | None,
    split_path: Path,
) -> _Scoring:
    """The test cases' scoring: their pairs; for a cohort run whose test cases have no pair at all, without pairs
    (a paired run, or a test list mixing both, has its unpaired cases refused or left out, and says so)."""
    task = cfg.model.task
    unpaired = [c for c in test if c not in pairs]
    if unpaired and cohorts is not None and len(unpaired) == len(test):
        sources = [c for c in test if c in cohorts.sources]
        if len(sources) < len(test):
            raise InputError(
                f"{split_path}: test cases {', '.join(sorted(set(test) - set(sources)))} have no "
                f"{cfg.model.roles[0]} image to translate"
            )
        cohort = {c: cohorts.targets[c] for c in split["train"] if c in cohorts.targets}
        logger.warning(
            "no test case has a pair: the test cases are judged without pairs, against the training %s cohort "
            "(docs/unpaired.md)",
            cfg.model.roles[1],
        )
        return _Scoring(
            task, {c: cohorts.sources[c].image for c in test}, cohort={c: s.image for c, s in cohort.items()}
        )
    if unpaired and cohorts is not None:
        logger.warning("test cases %s have no pair: left out; the paired test cases are scored", ", ".join(unpaired))
        test = [c for c in test if c in pairs]
    elif unpaired:
        raise InputError(
            f"{split_path}: test cases {', '.join(unpaired)} have no pair under {cfg.data.root}: "
            f"{cfg.model.kind} is scored against each test case's own {cfg.model.roles[1]}; put paired cases (both "
            "images of one subject on one grid) in the split's test list"
        )
    return _Scoring(
        task,
        {c: pairs[c].source for c in test},
        refs={c: pairs[c].target for c in test},
        masks={c: pairs[c].mask for c in test if pairs[c].mask is not None},
    )


def baseline_config(cfg: RunConfig, kind: str) -> RunConfig:
    """A pipeline's baseline: the experiment's data and task, model ``kind`` with its own defaults (nothing of the
    experiment's networks, losses or schedules: only the task and the look-up table's size), one epoch."""
    model = ModelConfig(kind=kind, task=cfg.model.task, bins=cfg.model.bins)
    return RunConfig.from_dict(replace(cfg, model=model, train=replace(cfg.train, epochs=1)).to_dict())


# length: the stages in the order they run (prepare, baseline, train, translate, evaluate, report), each a call or
# two, so a run reads top to bottom as it goes
def run_pipeline(
    path: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run every stage of a pipeline file into ``out``; returns the model's evaluation summary (with the baseline's).

    Raises:
        ConfigError: the file is invalid, or ``out`` holds a run made with other settings (without ``overwrite``).
    """
    from medtranslate.runtime.distributed import is_distributed

    if is_distributed():
        raise ConfigError(
            "run (and demo) are not split over processes; under torchrun run their stages one by one: "
            "train, translate, evaluate"
        )
    cfg, section = load_pipeline(path, overrides)
    out = Path(out)
    protected = [Path(path).resolve(), *_inputs_of(cfg.to_dict())]
    record = {**cfg.to_dict(), "pipeline": dict(section)}
    if record["train"].get("precision_used") is None:  # what train computed in: train's own config.yaml says it
        record["train"].pop("precision_used", None)
    _claim_run_dir(out, record, overwrite, protected)

    # prepare: optionally simulate low-dose pairs from the CTs and/or preprocess the cases, pair cases and fix the
    # split (all kept in RUN_DIR)
    if section.get("simulate_dose") is not None:
        cfg = _simulate(cfg, float(section["simulate_dose"]), out / "data")
    if section.get("prepare") is not None:
        cfg = _prepare(cfg, section["prepare"], out / "prepared")
    if get_kind(cfg.model.kind).learns_from == "cohorts":  # the split as train draws it, pairs to test
        cohorts = discover_cohorts(cfg)
        pairs = {cid: cohorts.pair(cid) for cid in cohorts.paired_ids}
    else:
        cohorts, pairs = None, discover_pairs(cfg)
    split_path = out / "split.json"
    if _stage("prepare", split_path.exists()):
        split = split_cohorts(cfg, cohorts) if cohorts else load_split(cfg, sorted(pairs))
        atomic_write_text(split_path, json.dumps(split, indent=2) + "\n")
    split = read_split(split_path)
    test = split["test"]
    if not test:  # (split.json keeps its parts disjoint: a case is in one only)
        test = split["val"]
        logger.warning("no test cases in the split: the validation cases %s are used as test cases", ", ".join(test))
    scoring = _scoring(cfg, split, test, pairs, cohorts, split_path)
    test = list(scoring.inputs)
    cfg = replace(cfg, data=replace(cfg.data, split=str(split_path)))

    # the baseline first, so the model's report can show it beside the model
    baseline_summary = None
    if section["baseline"] not in ("none", None):
        bcfg = baseline_config(cfg, section["baseline"])
        bckpt = _train_stage(bcfg, out / "baseline", progress)
        _translate_stage(bckpt, scoring.inputs, out / "baseline" / "translated", progress)
        bres = scoring.evaluate(out / "baseline" / "translated", out / "baseline" / "eval", figures=False)
        baseline_summary = {"kind": section["baseline"], **bres.summary, "training": _training_note(out / "baseline")}

    ckpt = _train_stage(cfg, out / "train", progress)
    suffix = get_task(cfg.model.task).output_suffix
    if _stage("translate", all((out / "translated" / f"{c}_{suffix}.nii.gz").exists() for c in test)):
        _translate_stage(ckpt, scoring.inputs, out / "translated", progress)
    result = scoring.evaluate(
        out / "translated",
        out / "eval",
        extra_summary={
            "model": cfg.model.kind,
            "baseline": baseline_summary,
            "training": _training_note(out / "train"),
            "trained_on": _trained_on(ckpt),
        },
    )
    # report: the evaluation report, with the baseline beside the model, at the top of RUN_DIR
    atomic_write_text(out / "report.html", (out / "eval" / "report.html").read_text(encoding="utf-8"))
    return result.summary
