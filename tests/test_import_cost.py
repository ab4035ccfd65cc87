"""``import structmat`` and ``structmat --help`` stay light (issue 27, item 13): they import torch
and nothing heavy beyond it. Checked as the set of modules a fresh interpreter holds afterwards, not
as a time (times depend on the machine and its load).

The heavy ones this guards against, with what they cost on top of ``import torch`` on a CPU
machine: ``torch._dynamo`` (~1 s; it was imported by ``torch.compiler.assume_constant_result``
in monarch/dispatch.py, and brings sympy and triton), ``scipy.sparse`` (~0.1-0.3 s; the rank
capacity's max flow), and the libraries only some features need (transformers, peft, matplotlib).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO

HEAVY = ("torch._dynamo", "sympy", "triton", "scipy", "matplotlib", "transformers", "peft", "bitsandbytes", "torchao")


def _cli(*argv: str) -> str:
    return f"from structmat.experiments import cli\ntry:\n    cli.main({list(argv)!r})\nexcept SystemExit:\n    pass"


PROGRAMS = {
    "import structmat": "import structmat",
    "structmat --help": _cli("--help"),
    "structmat finetune --help": _cli("finetune", "--help"),
    "structmat report --help": _cli("report", "--help"),
}


def modules_after(program: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``program``."""
    code = f"{program}\nimport json, sys\nprint('MODULES=' + json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_no_heavy_module_is_imported(name):
    modules = modules_after(PROGRAMS[name])
    assert "torch" in modules and "structmat" in modules
    heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"{name} imports {heavy}"


def test_the_check_sees_a_heavy_import():
    modules = modules_after("import structmat\nimport torch._dynamo")
    assert "torch._dynamo" in modules and "sympy" in modules
