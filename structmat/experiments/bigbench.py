"""BIG-bench tasks offline, from the ``bigbench==1.0.0`` source archive on PyPI.

The archive (358 MB, Apache-2.0) is fetched once from the package index pip uses and is never
installed: only the ``task.json`` files a task needs are extracted and cached
(:func:`structmat.experiments.cache.cache_dir`). ``pip download --no-deps bigbench==1.0.0`` does
not work for it (pip builds the sdist's metadata, which names a direct-URL dependency, and
refuses), so the archive is read from the index's page for the project and its sha256 checked.
Point ``$STRUCTMAT_BIGBENCH_ARCHIVE`` at a copy you downloaded yourself to skip the download.

Tasks (``name -> task.json`` in the archive):

- ``arithmetic``: ``arithmetic/3_digit_addition`` (1,000 questions "What is 161 plus 390?");
- ``strategyqa``: yes/no questions needing implicit multi-step reasoning (2,290; from
  StrategyQA, Geva et al. 2021); the answer is the ``Yes``/``No`` key of ``target_scores``;
- ``arithmetic_mix``: ``arithmetic/{3_digit_addition, 3_digit_subtraction,
  2_digit_multiplication}`` together (about 3,000 questions: enough for 2,000+ training
  examples, a validation and a test split).

Splits are fixed: each example goes to test when a hash of its question falls in the test
fraction, so the split does not depend on file order, seeds or the number of examples used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .cache import cache_dir, cached_folder

ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
ARCHIVE_ENV = "STRUCTMAT_BIGBENCH_ARCHIVE"
TASK_FILES: dict[str, tuple[str, ...]] = {  # task -> the task.json files whose examples it pools
    "arithmetic": ("arithmetic/3_digit_addition/task.json",),
    "strategyqa": ("strategyqa/task.json",),
    "arithmetic_mix": (
        "arithmetic/3_digit_addition/task.json",
        "arithmetic/3_digit_subtraction/task.json",
        "arithmetic/2_digit_multiplication/task.json",
    ),
}
LICENSE = "Apache-2.0 (BIG-bench redistributes both tasks; strategyqa is from StrategyQA, Geva et al. 2021)"


@dataclass(frozen=True)
class QAExample:
    """One question and its reference answer (a number, or "Yes"/"No" for strategyqa)."""

    question: str
    answer: str


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")


def _download_archive(dest: str) -> None:
    page_url = f"{_index_url()}/bigbench/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as resp:
            page = resp.read().decode()
        match = re.search(r'href="([^"]*' + re.escape(ARCHIVE_NAME) + r'[^"]*)"', page)
        if not match:
            raise OSError(f"{ARCHIVE_NAME} is not listed on {page_url}")
        url = urllib.parse.urljoin(page_url, match.group(1).split("#")[0])
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=300) as resp, open(dest, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as err:
        raise RuntimeError(
            f"could not download the BIG-bench archive ({err}). Download {ARCHIVE_NAME} yourself "
            f"(for example from https://pypi.org/project/bigbench/1.0.0/#files) and set "
            f"{ARCHIVE_ENV}=/path/to/{ARCHIVE_NAME}"
        ) from None
    if digest.hexdigest() != ARCHIVE_SHA256:
        os.remove(dest)
        raise RuntimeError(f"downloaded {ARCHIVE_NAME} has sha256 {digest.hexdigest()}, expected {ARCHIVE_SHA256}")


def archive_path() -> str:
    """Path of the ``bigbench-1.0.0.tar.gz`` source archive, downloading it once if needed."""
    given = os.environ.get(ARCHIVE_ENV)
    if given:
        if not os.path.isfile(given):
            raise FileNotFoundError(f"{ARCHIVE_ENV}={given!r} is not a file")
        return given
    folder = cached_folder(
        cache_dir("bigbench-archive"), lambda tmp: _download_archive(os.path.join(tmp, ARCHIVE_NAME))
    )
    return os.path.join(folder, ARCHIVE_NAME)


def _extract_tasks(archive: str, out: str) -> None:
    files = sorted({rel for rels in TASK_FILES.values() for rel in rels})
    wanted = {f"bigbench/benchmark_tasks/{rel}": rel for rel in files}
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                # Strip the archive's top folder ("bigbench-1.0.0/"); match exact member paths only.
                rel = wanted.get(member.name.split("/", 1)[-1])
                if rel is None or not member.isfile():
                    continue
                target = os.path.join(out, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    dst.write(src.read())
                found.add(rel)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise RuntimeError(
            f"cannot extract BIG-bench tasks from {archive} ({err}); the file is not a readable "
            f"{ARCHIVE_NAME}. Delete it and retry, or set {ARCHIVE_ENV} to a good copy"
        ) from None
    missing = sorted(set(files) - found)
    if missing:
        raise RuntimeError(f"{archive} does not contain {', '.join(missing)}; is it {ARCHIVE_NAME}?")


def task_folder() -> str:
    """Cached folder with the extracted ``task.json`` files of :data:`TASK_FILES`."""
    source = ARCHIVE_SHA256
    given = os.environ.get(ARCHIVE_ENV)
    if given and os.path.isfile(given):  # a user-supplied archive gets its own cache entry
        stat = os.stat(given)
        source = f"{os.path.realpath(given)}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(json.dumps([TASK_FILES, source], sort_keys=True).encode()).hexdigest()[:8]
    # the archive is located (or downloaded) only when the tasks are not cached yet
    return cached_folder(cache_dir(f"bigbench-tasks-{key}"), lambda tmp: _extract_tasks(archive_path(), tmp))


def _answer(task: str, example: dict) -> str:
    if task == "strategyqa":
        scores = example["target_scores"]
        return max(scores, key=scores.get)  # "Yes" or "No"
    return str(example["target"]).strip()


def _hash_fraction(question: str) -> float:
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64


def bigbench_splits(
    task: str, test_fraction: float = 0.2, validation_fraction: float = 0.0
) -> tuple[list[QAExample], list[QAExample], list[QAExample]]:
    """``(train, validation, test)`` question/answer pairs of a BIG-bench task (see :data:`TASK_FILES`).

    Duplicated questions are kept once; the split is by a hash of the question (fixed): test
    below ``test_fraction``, validation below ``test_fraction + validation_fraction``, train above.
    """
    if task not in TASK_FILES:
        raise ValueError(f"task must be one of {sorted(TASK_FILES)}, got {task!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not 0.0 <= validation_fraction < 1.0 - test_fraction:
        raise ValueError(f"validation_fraction must be in [0, 1 - test_fraction), got {validation_fraction!r}")
    examples = []
    for rel in TASK_FILES[task]:
        with open(os.path.join(task_folder(), rel)) as f:
            examples += json.load(f)["examples"]
    seen: set[str] = set()
    train, validation, test = [], [], []
    for ex in examples:
        question = ex["input"].strip()
        if question in seen:
            continue
        seen.add(question)
        h = _hash_fraction(question)
        part = test if h < test_fraction else validation if h < test_fraction + validation_fraction else train
        part.append(QAExample(question, _answer(task, ex)))
    return train, validation, test


def load_bigbench(task: str, test_fraction: float = 0.2) -> tuple[list[QAExample], list[QAExample]]:
    """``(train, test)`` question/answer pairs of a BIG-bench task (:func:`bigbench_splits`
    without a validation split)."""
    train, _, test = bigbench_splits(task, test_fraction)
    return train, test
