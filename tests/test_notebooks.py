"""The notebooks are stored executed (small size), their stored outputs are current, and they still run.

Stored outputs are checked without running anything (figures where a cell draws, no stderr, no
stray object reprs, a conclusion written by code, every code cell executed from its current
source). Then each notebook is re-executed at the small size and its outputs are compared with
the stored ones: the same cells with figures, the same text with the numbers masked, and the
numbers equal within a tolerance (training on another CPU may move the last digits; images are
never byte-identical, so they are not compared).

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


def _texts(output) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_reexecutes_to_its_stored_outputs(path):
    stored = nbformat.read(path, as_version=4)
    book = _execute(path)
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if STORE:
        nbformat.write(book, path)
        return
    restore = "stored outputs are stale; re-store with: STRUCTMAT_NB_STORE=1 python -m pytest tests/test_notebooks.py"
    for (i, img_s, text_s, num_s), (_, img_n, text_n, num_n) in zip(_summary(stored), _summary(book), strict=True):
        assert img_s == img_n, f"cell {i}: figure {'gone' if img_s else 'new'}; {restore}"
        assert text_s == text_n, f"cell {i}: text differs; {restore}\n--- stored\n{text_s}\n--- now\n{text_n}"
        bad = [(a, b) for a, b in zip(num_s, num_n, strict=True) if not math.isclose(a, b, rel_tol=REL_TOL,
               abs_tol=ABS_TOL)]  # fmt: skip
        assert not bad, f"cell {i}: numbers moved (stored, now): {bad[:5]}; {restore}"
