"""The documentation: the configuration reference is generated from the code, the MkDocs site builds in strict mode
(so a broken link or a page left out fails), and the README stays a page for users that links into docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from medtranslate.config_reference import SECTIONS, field_docs, reference_markdown

REPO = Path(__file__).resolve().parents[1]


def test_every_config_key_is_documented() -> None:
    undocumented = [f"{s}.{f.name}" for s, cls, module in SECTIONS for f in field_docs(cls, module) if not f.doc]
    assert not undocumented, f"add a comment to these config fields: {undocumented}"


def test_a_field_without_a_comment_is_reported(tmp_path: Path) -> None:
    # the check above must be able to fail: a class with one commented and one bare field
    import importlib.util

    source = "from dataclasses import dataclass\n\n@dataclass\nclass C:\n    # told\n    a: int = 1\n    b: int = 2\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = {f.name: f.doc for f in field_docs(module.C, module)}
    assert docs == {"a": "told", "b": ""}


def test_configuration_page_is_current() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == reference_markdown(), "regenerate: python -m medtranslate.config_reference > docs/configuration.md"


def _nav_pages(nav: list) -> set[str]:
    pages = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_docs_page_is_in_the_nav() -> None:
    nav = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages == nav


@pytest.mark.slow
def test_docs_build_in_strict_mode(tmp_path: Path) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(config_file=str(REPO / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    build(config)  # raises (mkdocs.exceptions.Abort) on any warning in strict mode: a broken link, a missing page
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_readme_is_for_users_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, "the README is for users: move details to docs/"
    links = re.findall(r"\]\(([^)#\s]+)", readme)
    assert links, "the README links into docs/"
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert not missing
