"""The environment scripts/setup.sh builds for the tests: the quantization packages of the test
extras (bitsandbytes, torchao; CPU builds, pinned in pyproject.toml) are there in CI and import
with the pinned torch, so the quantized-base tests run instead of skipping."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys

import pytest

QUANTIZATION = ("bitsandbytes", "torchao")
PINNED_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"  # the extras' markers


@pytest.mark.parametrize("package", QUANTIZATION)
def test_quantization_package_installed_in_ci_and_imports(package):
    if importlib.util.find_spec(package) is None:
        if os.environ.get("CI") and PINNED_PLATFORM:
            pytest.fail(f"CI lacks {package}: scripts/setup.sh installs the test extras of pyproject.toml")
        pytest.skip(f"{package} not installed; pip install -e '.[test]'")
    code = f"import torch, {package}; print(torch.__version__, {package}.__version__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
