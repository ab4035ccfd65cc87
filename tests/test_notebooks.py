"""The notebooks are stored executed (small size), their stored outputs are current, and they still run.

Stored outputs are checked without running anything (figures where a cell draws, no stderr, no
stray object reprs, a conclusion written by code, every code cell executed from its current
source). Then each notebook is re-executed at the small size and what it computes is compared
with the stored outputs: the same cells with figures, the same text (stdout and displayed
results) with the numbers masked, and the numbers equal within a tolerance (training on another
CPU may move the last digits; images are never byte-identical, so they are not compared).

stderr of a re-executed notebook is not compared as text: installed packages write there on
import (torchao's "Failed to load ...", torch's deprecation log lines), and that text depends on
the environment, not on the notebook. It is checked for what would be the notebook's own fault:
a traceback, an exception line, or a warning raised from structmat or from a notebook cell.

Re-store the outputs after changing a notebook (or code it prints):
``STRUCTMAT_NB_STORE=1 python -m pytest tests/test_notebooks.py``.
"""

import copy
import hashlib
import math
import os
import pathlib
import re

import nbformat
import pytest
from helpers import REPO
from nbclient import NotebookClient

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
STORE = os.environ.get("STRUCTMAT_NB_STORE") == "1"
HASH_KEY = "structmat_source_sha256"  # code-cell metadata: hash of the source its stored outputs came from
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
STRAY = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-f]+>|^Text\(|^\[<matplotlib")
TIMEOUT = int(os.environ.get("STRUCTMAT_NB_TIMEOUT", "600"))  # seconds per cell (raise it on a loaded machine)
REL_TOL, ABS_TOL = 0.05, 0.02  # numbers in re-executed outputs vs stored ones
DRAWS = re.compile(r"\bplot_\w+\(|\bplt\.(?:show|subplots|figure)\(|\.plot\(")  # a cell that draws a figure


def _source_hash(cell) -> str:
    return hashlib.sha256(cell.source.encode()).hexdigest()[:16]


# A warning line as the warnings module prints it: "path:line: Category: message".
WARNING_LINE = re.compile(r"^(?P<path>.+?):\d+: (?P<category>\w*Warning): ", re.M)
OWN_CODE = re.compile(r"/ipykernel_\d+/|<ipython-input-")  # a notebook cell's code, as warnings name it
EXCEPTION_LINE = re.compile(r"^\w+(?:Error|Exception)(?:: |$)", re.M)


def stderr_problems(text: str) -> list[str]:
    """What in a notebook's stderr is the notebook's own fault (tracebacks, exceptions, warnings
    from structmat or a notebook cell); other packages' import-time chatter is not."""
    problems = []
    if "Traceback (most recent call last)" in text:
        problems.append("a traceback")
    problems += [f"an exception: {m.group(0).strip()}" for m in EXCEPTION_LINE.finditer(text)]
    for m in WARNING_LINE.finditer(text):
        path = m.group("path")
        if OWN_CODE.search(path) or path.startswith(str(REPO)):
            problems.append(f"a {m.group('category')} from {path}: {text[m.end() :].splitlines()[0][:200]}")
    return problems


def _stderr(book) -> dict[int, str]:
    """Cell index -> its stderr text, for the cells that wrote any."""
    out = {}
    for i, cell in enumerate(book.cells):
        text = "".join(o.text for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stderr")
        if text:
            out[i] = text
    return out


def _texts(output) -> list[str]:
    if output.output_type == "stream":
        return [output.text] if output.name != "stderr" else []  # stderr: see stderr_problems
    data = output.get("data", {})
    return [data[k] for k in ("text/markdown", "text/plain") if k in data and "image/png" not in data]


def _summary(book) -> list[tuple[int, bool, str, list[float]]]:
    """Per code cell: (index, has an image, text with numbers masked, the numbers)."""
    out = []
    for i, cell in enumerate(book.cells):
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        text = "".join(t for o in outputs for t in _texts(o))
        numbers = [float(m.replace(",", "")) for m in NUMBER.findall(text)]
        image = any("image/png" in o.get("data", {}) for o in outputs)
        out.append((i, image, NUMBER.sub("#", text), numbers))
    return out


def _execute(path: pathlib.Path):
    book = nbformat.read(path, as_version=4)
    env = {"STRUCTMAT_NB_SIZE": "small", "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            book, timeout=TIMEOUT, kernel_name="python3", record_timing=False, coalesce_streams=True,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()  # fmt: skip
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.metadata[HASH_KEY] = _source_hash(cell)
    return book


def test_all_three_notebooks_present():
    assert {p.stem for p in NOTEBOOKS} == {"rank_study", "expressivity", "more_vs_lora"}


def check_stored(book) -> None:
    """Raise AssertionError unless ``book``'s stored outputs are complete, clean and from its current sources."""
    restore = "re-store with: STRUCTMAT_NB_STORE=1 python -m pytest tests/test_notebooks.py"
    codes = [c for c in book.cells if c.cell_type == "code"]
    assert len(codes) >= 3
    for i, cell in enumerate(book.cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"cell {i} is not executed; {restore}"
        assert cell.metadata.get(HASH_KEY) == _source_hash(cell), f"cell {i} changed since its outputs; {restore}"
        for o in cell.outputs:
            assert o.output_type != "error", f"cell {i} stored an error"
            assert not (o.output_type == "stream" and o.name == "stderr"), f"cell {i} writes to stderr: {o.text[:200]}"
            if o.output_type == "execute_result":
                text = o.get("data", {}).get("text/plain", "")
                assert not STRAY.search(text), f"cell {i} shows a stray object: {text[:100]}"
        if DRAWS.search(cell.source):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"cell {i} draws but has no image"
    conclusion = [
        i for i, c in enumerate(book.cells) if c.cell_type == "markdown" and c.source.startswith("## Conclusion")
    ]
    assert conclusion, "no '## Conclusion' cell"
    after = book.cells[conclusion[-1] + 1] if conclusion[-1] + 1 < len(book.cells) else None
    assert (
        after is not None
        and after.cell_type == "code"
        and any("text/markdown" in o.get("data", {}) for o in after.outputs)
    ), "the conclusion must be markdown written by code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_complete_and_clean(path):
    check_stored(nbformat.read(path, as_version=4))


def test_check_stored_catches_stale_and_noisy_outputs():
    book = nbformat.read(NOTEBOOKS[0], as_version=4)
    check_stored(book)
    first = next(i for i, c in enumerate(book.cells) if c.cell_type == "code")
    stale = copy.deepcopy(book)
    stale.cells[first].source += "\nprint('new')"
    with pytest.raises(AssertionError, match="changed since its outputs"):
        check_stored(stale)
    noisy = copy.deepcopy(book)
    noisy.cells[first].outputs.append(nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: ..."))
    with pytest.raises(AssertionError, match="stderr"):
        check_stored(noisy)
    stray = copy.deepcopy(book)
    stray.cells[first].outputs.append(
        nbformat.v4.new_output("execute_result", data={"text/plain": "<torch._C.Generator at 0x7f8bd9be1010>"})
    )
    with pytest.raises(AssertionError, match="stray object"):
        check_stored(stray)


def test_stderr_check_tells_the_notebooks_faults_from_other_packages_chatter():
    chatter = (
        "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
        "Could not load this library: /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.so\n"
        "W1203 17:11:46.896000 6586 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass\n"
        "/venv/lib/python3.11/site-packages/peft/import_utils.py:12: FutureWarning: something is deprecated\n"
        "  import torchao\n"
        "Loading weights: 100%|##########| 103/103 [00:00<00:00, 9333.36it/s]\n"
    )
    assert stderr_problems(chatter) == []
    own = [
        f"{REPO}/structmat/adapters/model.py:88: UserWarning: target module 'lm_head' shares its weight\n",
        "/tmp/ipykernel_4242/1234567.py:3: RuntimeWarning: divide by zero\n",
        'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: rank must be positive\n',
        "ValueError: rank must be positive\n",
    ]
    for text in own:
        assert stderr_problems(chatter + text), text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_reexecutes_to_its_stored_outputs(path):
    stored = nbformat.read(path, as_version=4)
    book = _execute(path)
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    problems = {i: p for i, text in _stderr(book).items() if (p := stderr_problems(text))}
    assert not problems, f"the notebook's own code writes to stderr: {problems}"
    if STORE:  # what is left on stderr is other packages' chatter: not part of the stored results
        for cell in book.cells:
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        nbformat.write(book, path)
        return
    restore = "stored outputs are stale; re-store with: STRUCTMAT_NB_STORE=1 python -m pytest tests/test_notebooks.py"
    for (i, img_s, text_s, num_s), (_, img_n, text_n, num_n) in zip(_summary(stored), _summary(book), strict=True):
        assert img_s == img_n, f"cell {i}: figure {'gone' if img_s else 'new'}; {restore}"
        assert text_s == text_n, f"cell {i}: text differs; {restore}\n--- stored\n{text_s}\n--- now\n{text_n}"
        bad = [(a, b) for a, b in zip(num_s, num_n, strict=True) if not math.isclose(a, b, rel_tol=REL_TOL,
               abs_tol=ABS_TOL)]  # fmt: skip
        assert not bad, f"cell {i}: numbers moved (stored, now): {bad[:5]}; {restore}"
