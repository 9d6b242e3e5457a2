"""Experiment configs: every value checked for type and range before any work, YAML read safely, errors bounded."""

from __future__ import annotations

import pytest
import yaml

from medtranslate.core.checks import show
from medtranslate.core.config import RunConfig, config_differences, load_config
from medtranslate.core.errors import ConfigError

from .conftest import REPO, cli


def _write(tmp_path, **values):
    cfg = {"data": {"root": "cases", "patch_size": 32}, "model": {"kind": "pix2pix", "num_downs": 3}, "train": {}}
    for dotted, value in values.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("data__patch_size", 7, r"data.patch_size must be a whole number from 16 to 4096, got 7"),
        ("data__patch_size", 7.5, r"data.patch_size must be a whole number from 16 to 4096, got 7.5"),
        ("data__patch_size", 100, r"data.patch_size 100 must be a multiple of 8"),
        ("data__spacing", "abc", r"data.spacing must be 3 numbers in mm .* got 'abc'"),
        ("data__spacing", 5, r"data.spacing must be 3 numbers in mm .* got 5"),
        ("data__spacing", [1.0, 0.0, 2.0], r"data.spacing must be a finite number > 0 and <= 100, got 0.0"),
        ("data__spacing", [1.0, -1.0, 2.0], r"data.spacing must be a finite number > 0"),
        ("data__context", True, r"data.context must be a whole number"),
        ("data__root", ["a"], r"data.root must be a path, got \['a'\]"),
        ("model__dropout", 5, r"model.dropout must be a finite number >= 0 and < 1, got 5"),
        ("model__ngf", 0.5, r"model.ngf must be a whole number from 1 to 1024, got 0.5"),
        ("model__ngf", 0, r"model.ngf must be a whole number from 1 to 1024, got 0"),
        ("model__lambda_l1", float("nan"), r"model.lambda_l1 must be a finite number >= 0, got nan"),
        ("model__task", ["mr2ct"], r"unknown model.task \['mr2ct'\]"),
        ("train__seed", "abc", r"train.seed must be a whole number from 0 to .* got 'abc'"),
        ("train__num_threads", -1, r"train.num_threads must be a whole number from 1 to 4096, got -1"),
        ("train__max_minutes", -5, r"train.max_minutes must be a finite number > 0, got -5"),
        ("train__max_minutes", float("inf"), r"train.max_minutes must be a finite number > 0, got inf"),
        ("train__batch_size", 0, r"train.batch_size must be a whole number >= 1, got 0"),
        ("train__lr", "fast", r"train.lr must be a finite number > 0 and <= 1, got 'fast'"),
        ("train__channels_last", "yes", r"train.channels_last must be true or false, got 'yes'"),
        ("train__decay_epochs", 20, r"train.decay_epochs must be a whole number from 0 to 10, got 20"),
        ("model__structure_loss", "ssim", r"unknown model.structure_loss 'ssim'; expected one of: none, mind, gc"),
        ("model__cycle_loss", "l2", r"unknown model.cycle_loss 'l2'; expected one of: l1, l1_ssim, lowpass"),
        ("model__lambda_structure", -1, r"model.lambda_structure must be a finite number >= 0, got -1"),
        ("model__lambda_body", -1, r"model.lambda_body must be a finite number >= 0, got -1"),
        ("model__lambda_body", 5, r"model.lambda_body is a CycleGAN loss; model.kind pix2pix has none: set it to 0"),
        ("model__lambda_histogram", 1, r"model.lambda_histogram is a CycleGAN loss; model.kind pix2pix has none"),
        ("model__lambda_structure", 2, r"model.lambda_structure is a CycleGAN loss; model.kind pix2pix has none"),
        ("model__structure_decay", True, r"model.structure_decay needs a CycleGAN with model.lambda_structure > 0"),
        ("model__structure_decay", "yes", r"model.structure_decay must be true or false, got 'yes'"),
        ("model__l1_warmup_epochs", -1, r"model.l1_warmup_epochs must be a whole number from 0 to 100000, got -1"),
        ("train__lr_d", 0, r"train.lr_d must be a finite number > 0 and <= 1, got 0"),
        ("train__ema", 1.0, r"train.ema must be a finite number >= 0 and < 1, got 1.0"),
        ("model__tta", "yes", r"model.tta must be true or false, got 'yes'"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_a_one_line_error(tmp_path, key, value, match):
    path = _write(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_l1_warm_up_is_refused_for_a_model_without_an_l1_term(tmp_path):
    with pytest.raises(ConfigError, match=r"model.l1_warmup_epochs is a pix2pix schedule .* model.kind cyclegan"):
        load_config(_write(tmp_path, model__kind="cyclegan", model__l1_warmup_epochs=3))


def test_test_time_flips_are_refused_for_a_model_without_a_network(tmp_path):
    with pytest.raises(ConfigError, match=r"model.tta averages a network's views; model.kind intensity_map has none"):
        load_config(_write(tmp_path, model__kind="intensity_map", model__tta=True))


def test_patch_size_must_fit_the_networks(tmp_path):
    with pytest.raises(ConfigError, match=r"too small for a PatchGAN with model.d_layers 3; use at least 24"):
        load_config(_write(tmp_path, data__patch_size=16))
    cfg = load_config(_write(tmp_path, data__patch_size=16, model__d_layers=2))
    assert cfg.model.d_layers == 2
    with pytest.raises(ConfigError, match="multiple of 4 .*ResNet"):
        load_config(_write(tmp_path, data__patch_size=30, model__generator="resnet"))


def test_every_shipped_pipeline_is_a_valid_config():
    for path in sorted((REPO / "pipelines").glob("*.yaml")):
        if path.name == "demo.yaml":
            continue
        raw = yaml.safe_load(path.read_text())
        raw.pop("pipeline", None)
        assert RunConfig.from_dict(raw, source=str(path)).model.kind


def test_billion_laughs_is_refused_unexpanded_without_printing_the_expansion(tmp_path, monkeypatch):
    import tracemalloc

    from medtranslate.core import config as config_module

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    lines.append("data: {root: *j}")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    # refused before it is expanded, its size counted per node of the file (memoised), not per value of the expansion
    # (9**10): checked by the work done, not by a time (without the memo: 207600 visits, measured)
    visits = []
    size_of = config_module._expanded_size
    monkeypatch.setattr(config_module, "_expanded_size", lambda *a: visits.append(1) or size_of(*a))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="expands to more than") as info:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(visits) < 1000 and peak < 10_000_000 and len(str(info.value)) < 400
    result = cli("train", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and len(result.stderr) < 400 and "Traceback" not in result.stderr


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("data: &d {root: x, more: *d}\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),
        (b"data: {root: x\nmodel: [", r"not valid YAML \(.* at line \d+, column \d+\); fix the syntax"),
        (b"- just\n- a list\n", r"expected a mapping with sections data, model, train; got \['just', 'a list'\]"),
        (
            b"data: [1, 2]\nmodel: {kind: pix2pix}\n",
            r"section 'data' must be a mapping of keys to values, got \[1, 2\]",
        ),
    ],
)
def test_files_that_are_not_configs(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_set_overrides_are_parsed_safely(tmp_path):
    path = _write(tmp_path)
    with pytest.raises(ConfigError, match=r"--set data.root: not valid YAML"):
        load_config(path, ["data.root=[unclosed"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["epochs=3"])
    assert load_config(path, ["train.epochs=3"]).train.epochs == 3


def test_show_bounds_any_value():
    huge = {"k": ["x" * 10_000] * 10_000}
    assert len(show(huge)) < 200 and len(show("y" * 10**6)) < 100


def test_config_differences_name_nested_keys():
    diffs = config_differences(
        {"model": {"ngf": 64, "kind": "pix2pix"}, "pipeline": None},
        {"model": {"ngf": 32, "kind": "pix2pix"}, "pipeline": {"baseline": "none"}},
    )
    assert diffs == ["model.ngf: 64 -> 32", "pipeline: None -> {'baseline': 'none'}"]


def test_every_cli_config_error_is_one_line(tmp_path, capsys):
    from medtranslate.cli import main

    for i, content in enumerate(
        [
            b"\x00\x01binary",
            b"model: {kind: pix2pix, ngf: 0.5}\ndata: {root: x}\n",
            b"pipeline: [1, 2]\ndata: {root: x}\nmodel: {kind: pix2pix}\n",
        ]
    ):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(content)
        for command in (
            ["train", str(path), "--out", str(tmp_path / f"t{i}")],
            ["run", str(path), "--out", str(tmp_path / f"r{i}")],
        ):
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "error" in err, err
    unclosed = cli(
        "run",
        str(REPO / "pipelines" / "mr2ct_pix2pix.yaml"),
        "--out",
        str(tmp_path / "u"),
        "--set",
        "data.root=[unclosed",
    )
    assert unclosed.returncode == 2 and "not valid YAML" in unclosed.stderr and "Traceback" not in unclosed.stderr
