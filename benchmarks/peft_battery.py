"""PEFT's own test battery, run on MoRe: PEFT's ``tests/test_custom_models.py`` with MoRe rows added.

    python benchmarks/peft_battery.py               # all MoRe rows; writes benchmarks/results/peft_battery.md
    python benchmarks/peft_battery.py --quick       # a few rows (the CI subset)

PEFT ships its tests in its source distribution. This script fetches the sdist of the installed
PEFT version (``pip download --no-deps --no-binary :all: peft==<version>``, cached), copies its
``tests/`` folder, adds MoRe rows to the ``TEST_CASES`` and ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``
tables of ``test_custom_models.py`` (the ~100 tests of ``TestPeftCustomModel`` run per row: save
and load, merge and safe merge, disable, several adapters, training, ...), runs the MoRe tests
only, and summarises them: passed, failed, and not applicable with the reason (:data:`NOT_APPLICABLE`).
A failure that is not listed there makes the script exit 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# The MoRe rows. MLP: lin0 is 10 -> 20, lin1 20 -> 2 (MoRe pads 10 to 2 blocks of 5 ...);
# EmbConv1D has a transformers Conv1D (1 -> 5); Conv1d's lin0 is 9 -> 2.
ROWS = [
    ("Vanilla MLP 1 MoRe", "MLP", {"target_modules": ["lin0"], "nblocks": 2, "rank": 2}),
    ("Vanilla MLP 2 MoRe regex", "MLP", {"target_modules": "lin0", "nblocks": 2, "rank": 2}),
    ("Vanilla MLP 3 MoRe both layers", "MLP", {"target_modules": ["lin0", "lin1"], "nblocks": 2, "rank": 1}),
    (
        "Vanilla MLP 4 MoRe modules_to_save",
        "MLP",
        {"target_modules": ["lin0"], "modules_to_save": ["lin1"], "nblocks": 2, "rank": 2},
    ),  # noqa: E501
    ("Vanilla MLP 5 MoRe one block", "MLP", {"target_modules": ["lin0"], "nblocks": 1, "rank": 2}),
    (
        "Vanilla MLP 6 MoRe rank_pattern",
        "MLP",
        {"target_modules": ["lin0", "lin1"], "nblocks": 2, "rank": 1, "rank_pattern": {"lin0": 2}},
    ),  # noqa: E501
    ("Vanilla MLP 7 MoRe lowrank", "MLP", {"target_modules": ["lin0"], "structure": "lowrank", "rank": 2}),
    ("Vanilla MLP 8 MoRe dropout", "MLP", {"target_modules": ["lin0"], "nblocks": 2, "rank": 2, "dropout": 0.1}),
    (
        "Vanilla MLP 9 MoRe reference layout",
        "MLP",
        {"target_modules": ["lin0"], "nblocks": 3, "rank": 1, "layout": "reference"},
    ),  # noqa: E501
    ("Embedding + transformers Conv1D 1 MoRe", "EmbConv1D", {"target_modules": ["conv1d"], "nblocks": 1, "rank": 1}),
    ("Conv1d 1 MoRe", "Conv1d", {"target_modules": ["lin0"], "nblocks": 1, "rank": 1}),
]
MULTI_ROWS = [
    ("MoRe Same", "more", {"target_modules": ["lin0"], "nblocks": 2, "rank": 2, "init_weights": False},
     {"target_modules": ["lin0"], "nblocks": 2, "rank": 2, "init_weights": False}),
    ("MoRe Different", "more", {"target_modules": ["lin0"], "nblocks": 2, "rank": 2, "init_weights": False},
     {"target_modules": ["lin1"], "nblocks": 2, "rank": 1, "init_weights": False}),
]  # fmt: skip
QUICK = ["Vanilla MLP 1 MoRe", "Vanilla MLP 4 MoRe modules_to_save", "Embedding + transformers Conv1D 1 MoRe"]

# test-name pattern -> why it does not apply to MoRe (checked: these are the only failures allowed)
NOT_APPLICABLE: dict[str, str] = {}


def peft_version() -> str:
    return importlib.metadata.version("peft")


def fetch_tests(version: str, cache: pathlib.Path) -> pathlib.Path:
    """The ``tests/`` folder of PEFT's sdist ``version`` (downloaded once into ``cache``)."""
    folder = cache / f"peft-{version}"
    if (folder / "tests" / "test_custom_models.py").is_file():
        return folder / "tests"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"peft=={version}",
             "-d", tmp],
            check=True,
        )  # fmt: skip
        archive = next(pathlib.Path(tmp).glob("peft-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if "/tests/" in m.name and m.isfile()]
            tar.extractall(tmp, members=members, filter="data")
        shutil.copytree(pathlib.Path(tmp) / f"peft-{version}" / "tests", folder / "tests")
    return folder / "tests"


def patched_tests(tests: pathlib.Path, out: pathlib.Path, rows, multi_rows) -> pathlib.Path:
    """A copy of ``tests`` whose ``test_custom_models.py`` has the MoRe rows."""
    shutil.copytree(tests, out / "tests")
    path = out / "tests" / "test_custom_models.py"
    text = path.read_text()
    row_code = "".join(f"    ({name!r}, {model!r}, MoReConfig, {kwargs!r}),\n" for name, model, kwargs in rows)
    multi_code = "".join(
        f"    ({name!r}, {prefix!r}, MoReConfig, {a!r}, {b!r}),\n" for name, prefix, a, b in multi_rows
    )
    for table, code in (("TEST_CASES = [\n", row_code), ("MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = [\n", multi_code)):
        if table not in text:
            raise RuntimeError(f"PEFT {peft_version()}'s test_custom_models.py has no '{table.strip()}' table")
        text = text.replace(table, table + code, 1)
    text = "from structmat.adapters import MoReConfig  # added by structmat's battery\n" + text
    path.write_text(text)
    (out / "tests" / "__init__.py").touch()
    (out / "conftest.py").write_text(STUBS)
    return out / "tests"


# PEFT's testing_common imports diffusers for its Stable Diffusion tests, which the custom-model
# battery never runs; a stand-in module keeps that import from needing the package.
STUBS = """
import importlib.util, sys, types

if importlib.util.find_spec("diffusers") is None:
    stub = types.ModuleType("diffusers")
    stub.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
    sys.modules["diffusers"] = stub
"""


def run(tests: pathlib.Path, junit: pathlib.Path, workers: int) -> int:
    cmd = [
        sys.executable, "-m", "pytest", str(tests / "test_custom_models.py"), "-k", "MoRe", "-q", "-p",
        "no:cacheprovider", "--junitxml", str(junit), "-o", "addopts=", "--rootdir", str(tests.parent),
    ]  # fmt: skip
    if workers > 1:
        cmd += ["-n", str(workers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tests.parent)]), HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=tests.parent, env=env, check=False).returncode


def summarise(junit: pathlib.Path) -> dict:
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                outcome, message = "failed", (node.get("message") or "")[:300]
        if case.find("skipped") is not None:
            outcome, message = "skipped", (case.find("skipped").get("message") or "")[:300]
        reason = next((why for pattern, why in NOT_APPLICABLE.items() if re.search(pattern, name)), None)
        if outcome == "failed" and reason is not None:
            outcome = "not applicable"
            message = reason
        cases.append(
            {"test": f"{case.get('classname', '').rsplit('.', 1)[-1]}::{name}", "outcome": outcome, "message": message}
        )
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped", "not applicable")}
    return {"counts": counts, "cases": cases}


def write(summary: dict, command: str, seconds: float, out: pathlib.Path) -> pathlib.Path:
    import platform

    import torch

    c = summary["counts"]
    lines = [
        f"# PEFT's test battery on MoRe (peft {peft_version()})",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}).  ",
        f"PEFT's `tests/test_custom_models.py` from its sdist with {len(ROWS)} MoRe rows in `TEST_CASES` and "
        f"{len(MULTI_ROWS)} in `MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES` (the rows: `benchmarks/peft_battery.py`); "
        f"only the MoRe tests run.",
        "",
        f"**{c['passed']} passed, {c['failed']} failed, {c['not applicable']} not applicable, {c['skipped']} skipped "
        f"(by PEFT's own conditions).**",
        "",
    ]
    if c["failed"]:
        lines += ["## Failed", ""] + [
            f"- `{x['test']}`: {x['message']}" for x in summary["cases"] if x["outcome"] == "failed"
        ]
        lines.append("")
    if c["not applicable"]:
        lines += ["## Not applicable to MoRe", ""]
        lines += [f"- `{x['test']}`: {x['message']}" for x in summary["cases"] if x["outcome"] == "not applicable"]
        lines.append("")
    skipped = sorted({x["message"] for x in summary["cases"] if x["outcome"] == "skipped"})
    if skipped:
        lines += ["## Skipped by PEFT's tests (reasons as PEFT gives them)", ""] + [f"- {m}" for m in skipped] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only the rows {QUICK} (what CI runs)")
    ap.add_argument("--workers", type=int, default=1, help="pytest-xdist workers (default 1)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/structmat/peft-tests"))
    ap.add_argument("--out", default=None, help="summary file (default: benchmarks/results/peft_battery[_quick].md)")
    args = ap.parse_args(argv)
    global ROWS, MULTI_ROWS
    if args.quick:
        ROWS = [r for r in ROWS if r[0] in QUICK]
        MULTI_ROWS = MULTI_ROWS[:1]
    out = (
        pathlib.Path(args.out) if args.out else RESULTS / ("peft_battery_quick.md" if args.quick else "peft_battery.md")
    )
    t0 = time.time()
    tests = fetch_tests(peft_version(), pathlib.Path(args.cache))
    with tempfile.TemporaryDirectory() as tmp:
        patched = patched_tests(tests, pathlib.Path(tmp), ROWS, MULTI_ROWS)
        junit = pathlib.Path(tmp) / "junit.xml"
        run(patched, junit, args.workers)
        if not junit.is_file():
            print("pytest wrote no report: PEFT's tests did not run", file=sys.stderr)
            return 1
        summary = summarise(junit)
    command = "python benchmarks/peft_battery.py" + (" --quick" if args.quick else "")
    path = write(summary, command, time.time() - t0, out)
    c = summary["counts"]
    print(
        f"{c['passed']} passed, {c['failed']} failed, {c['not applicable']} not applicable, "
        f"{c['skipped']} skipped: {path}"
    )
    return 1 if c["failed"] or not c["passed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
