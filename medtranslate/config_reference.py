"""The configuration reference (docs/configuration.md), generated from the config classes' own field comments.

Each key of a pipeline file is a field of a frozen dataclass; its documentation is the comment on its line or the
comment lines right above it. Generating the page from those comments keeps one source: a test regenerates it and
fails when the committed page differs or when a field has no comment.

Run: python -m medtranslate.config_reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from dataclasses import dataclass, fields
from pathlib import Path

from medtranslate import pipeline
from medtranslate.core import config
from medtranslate.core.kinds import MODEL_KINDS
from medtranslate.core.tasks import TASKS
from medtranslate.preprocessing import preprocess

__all__ = ["FieldDoc", "field_docs", "reference_markdown"]

# (section of a pipeline file, class, module whose source holds the class)
SECTIONS = (
    ("data", config.DataConfig, config),
    ("model", config.ModelConfig, config),
    ("train", config.TrainConfig, config),
    ("prepare", preprocess.PreprocessOptions, preprocess),
)


@dataclass(frozen=True)
class FieldDoc:
    name: str
    type: str
    default: str
    doc: str


def field_docs(cls: type, module: object) -> list[FieldDoc]:
    """Every dataclass field of ``cls`` with its annotation, default and comment (empty when it has none)."""
    source = Path(module.__file__).read_text()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    names = {f.name for f in fields(cls)}
    out = []
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id in names):
            continue
        if isinstance(stmt.value, ast.Call):  # field(default_factory=...): a nested section, not a key
            continue
        above, row = [], stmt.lineno - 1
        while row >= 1 and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, comments[row])
            row -= 1
        parts = above + ([comments[stmt.lineno]] if stmt.lineno in comments else [])
        default = ast.unparse(stmt.value) if stmt.value is not None else "(required)"
        out.append(FieldDoc(stmt.target.id, ast.unparse(stmt.annotation), default, " ".join(parts)))
    return out


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a pipe would end the cell, and <root> would be read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def reference_markdown() -> str:
    """The page: one table per section, then the defaults that depend on the model kind and the task."""
    out = [
        "# Configuration",
        "",
        "Every key of a pipeline file (`pipelines/*.yaml`), generated from the comments on the configuration classes'",
        "fields by `python -m medtranslate.config_reference` (a test fails when this page is stale or a key has no",
        "comment). Any key can be overridden on the command line: `--set section.key=value` (the value is YAML).",
        "Every value is checked for type and range before any data is read; an unknown key is an error that lists",
        "the valid ones. A default of `None` means the model kind's or the task's default (tables at the end).",
        "",
    ]
    titles = {
        "data": "`data`: where the volumes are and how slices are made from them",
        "model": "`model`: which model, its networks and losses",
        "train": "`train`: how long and how to optimise",
        "prepare": "`prepare`: `preprocess` run on `data.root` before training (the options of `medtranslate "
        "preprocess`; `run` only)",
    }
    for section, cls, module in SECTIONS:
        out += [f"## {titles[section]}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for f in field_docs(cls, module):
            out.append(f"| `{section}.{f.name}` | `{_cell(f.type)}` | `{_cell(f.default)}` | {_cell(f.doc)} |")
        out.append("")
    out += ["## `pipeline`: what `run` adds around training", "", "| key | meaning |", "| --- | --- |"]
    out += [f"| `pipeline.{key}` | {_cell(doc)} |" for key, doc in pipeline.PIPELINE_KEYS.items()]
    out += ["", "## Model kinds and their defaults", "", "| `model.kind` | what it is | learns from | defaults |"]
    out.append("| --- | --- | --- | --- |")
    for kind in MODEL_KINDS.values():
        defaults = ", ".join(f"`model.{k}`: {v}" for k, v in kind.defaults.items())
        out.append(f"| `{kind.name}` | {_cell(kind.summary)} | {kind.learns_from} | {defaults} |")
    out += ["", "## Defaults per task", "", "| `model.task` | defaults |", "| --- | --- |"]
    for name, task in TASKS.items():
        items = [f"`{s}.{k}`: {v}" for s, d in task.defaults.items() for k, v in d.items()]
        out.append(f"| `{name}` | {', '.join(items)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
