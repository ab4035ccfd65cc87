"""The fused Triton Monarch kernel on a GPU: accuracy, a launch-configuration sweep, and
forward+backward time against the bmm paths and the memory-traffic floor. Needs CUDA and triton.

    python benchmarks/bench_triton.py            # sweep, then the table with the best config
    python benchmarks/bench_triton.py --no-sweep # the table with triton_kernel.DEFAULT_CONFIG

Times, in milliseconds, of one forward+backward with a dense upstream gradient: the GPU's time
(median of ``triton.testing.do_bench`` over replays of a CUDA graph of 10 steps: no Python or
launch cost, alike for every case), and beside it the eager time (the step run from Python,
``do_bench`` median, host overhead included). Ratios are against the bmm reference of
bench_multiply.py measured in the same run. The floor is the fewest bytes a forward+backward must
move (read x, write y; read grad_y and x, write grad_x: ``n * (3*in + 2*out)`` elements) over the
copy bandwidth measured at the start. Results: ``--out`` (.json) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, header  # noqa: E402
from bench_multiply import SHAPES, reference_bmm  # noqa: E402

from structmat import Monarch  # noqa: E402
from structmat.monarch import MultiplyPath, backend  # noqa: E402
from structmat.monarch import triton_kernel as tk  # noqa: E402
from structmat.monarch.multiply import run_path  # noqa: E402

DEVICE = "cuda"


def median_ms(fn) -> float:
    if DEVICE == "cpu":  # --smoke: the script's own plumbing under Triton's interpreter
        import statistics
        import time

        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def graph_ms(fn, steps: int = 10) -> float:
    """Median milliseconds per call of ``fn`` replayed from a CUDA graph of ``steps`` calls:
    the GPU's time alone, without Python's and the launches' (the same for every case)."""
    if DEVICE == "cpu":
        return median_ms(fn)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            fn()
    return median_ms(graph.replay) / steps


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, read plus write."""
    a = torch.empty(2**28 if DEVICE == "cuda" else 2**20, device=DEVICE)
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / (median_ms(lambda: b.copy_(a)) * 1e-3)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double())).item()


def step(fn, x, grad, params):
    def run():
        x.grad = None
        for p in params:
            p.grad = None
        fn(x).backward(grad)

    return run


def accuracy(in_f, out_f, n, rank, dtype) -> str:
    m = Monarch(in_f, out_f, 4, rank, device=DEVICE, dtype=dtype)
    x = torch.randn(n, in_f, device=DEVICE, dtype=dtype, requires_grad=True)
    g = torch.randn(n, out_f, device=DEVICE, dtype=dtype)
    outs = []
    for name in ("triton", "torch"):
        m.zero_grad()
        x.grad = None
        torch.full((2**20,), float("nan"), device=DEVICE)  # freed NaNs: unwritten outputs show
        with backend(name):
            y = m(x)
        y.backward(g)
        outs.append([y, x.grad, m.blkdiag1.grad, m.blkdiag2.grad])
    ref = [m.to_dense().double()]
    x64, g64 = x.detach().double(), g.double()
    y64 = x64 @ ref[0].T
    errs = [rel_err(outs[0][0], y64), rel_err(outs[0][1], g64 @ ref[0])]
    errs += [rel_err(a, b) for a, b in zip(outs[0][2:], outs[1][2:], strict=True)]
    return (
        f"{in_f}x{out_f} n={n} rank={rank} {str(dtype)[6:]}: "
        f"rel err y {errs[0]:.1e}, grad_x {errs[1]:.1e} (vs float64); "
        f"grad blkdiag1 {errs[2]:.1e}, blkdiag2 {errs[3]:.1e} (vs the torch path)"
    )


def sweep(in_f, out_f, n, ranks, smoke=False) -> dict:
    """Forward and backward kernel time per config, summed over ranks; returns the best."""
    grid = [
        {"block_n": bn, "block_a": ba, "block_b": ba, "num_warps": w, "num_stages": st}
        for bn, ba, w, st in itertools.product([16, 32, 64], [32, 64, 128], [4], [3, 4])
    ][: 2 if smoke else None]
    results = []
    for cfg in grid:
        cfg = tk.DEFAULT_CONFIG | cfg
        total = 0.0
        for rank in ranks:
            m = Monarch(in_f, out_f, 4, rank, device=DEVICE)
            x = torch.randn(n, in_f, device=DEVICE)
            g = torch.randn(n, out_f, device=DEVICE)
            w1, w2t = tk.kernel_layout(m.blkdiag1.detach(), m.blkdiag2.detach())
            for a, backward in ((x, False), (g, True)):
                total += median_ms(functools.partial(tk.launch, a, w1, w2t, backward, None, cfg))
        results.append((total, cfg))
        print(f"  {json.dumps(cfg)}: {total * 1e3:.0f} us (fwd+bwd kernels, ranks {ranks})", flush=True)
    best = min(results, key=lambda t: t[0])
    print(f"best config: {json.dumps(best[1])} ({best[0] * 1e3:.0f} us)")
    return best[1]


def path_cases(m: Monarch, config: dict) -> dict:
    """The multiplies timed against each other, each a function of ``x``."""

    def with_backend(name):
        def fn(x):
            with backend(name):
                return m(x)

        return fn

    return {
        "bmm reference": lambda x: reference_bmm(x, m.blkdiag1, m.blkdiag2),
        "structmat bmm path": lambda x: run_path(MultiplyPath.BMM, x, m.blkdiag1, m.blkdiag2),
        "structmat torch path": with_backend("torch"),
        "structmat Triton": lambda x: tk.triton_multiply(x, m.blkdiag1, m.blkdiag2, config=config),
    }


def table(shapes, ranks, tokens_list, dtype, bandwidth, config: dict, nblocks: int = 4) -> list[dict]:
    rows = []
    for (in_f, out_f), n, rank in itertools.product(shapes, tokens_list, ranks):
        m = Monarch(in_f, out_f, nblocks, rank, device=DEVICE, dtype=dtype)
        x = torch.randn(n, in_f, device=DEVICE, dtype=dtype, requires_grad=True)
        g = torch.randn(n, out_f, device=DEVICE, dtype=dtype)
        params = list(m.parameters())

        cases = path_cases(m, config)
        t = {name: graph_ms(step(fn, x, g, params)) for name, fn in cases.items()}
        eager = {name: median_ms(step(fn, x, g, params)) for name, fn in cases.items()}
        floor = n * (3 * in_f + 2 * out_f) * x.element_size() / bandwidth * 1e3
        ref = t["bmm reference"]
        row = {"shape": f"{in_f}x{out_f}", "tokens": n, "nblocks": nblocks, "rank": rank, "dtype": str(dtype)[6:]}
        row["floor_ms"] = floor
        row |= {name: ms for name, ms in t.items()} | {f"{name} (eager)": ms for name, ms in eager.items()}
        rows.append(row)
        print(
            f"{in_f}x{out_f} n={n} nblocks={nblocks} rank={rank} {row['dtype']}: "
            + ", ".join(f"{name} {ms:.3f} ms ({ref / ms:.2f}x faster than bmm ref)" for name, ms in t.items())
            + f"; floor {floor:.3f} ms; eager (Python and launches included): "
            + ", ".join(f"{name} {ms:.3f} ms" for name, ms in eager.items()),
            flush=True,
        )
    return rows


CASES = ["bmm reference", "structmat bmm path", "structmat torch path", "structmat Triton"]


def markdown(rows: list[dict]) -> str:
    """The README's table: GPU time (CUDA graph) per case, and the eager time of the two paths."""
    lines = [
        "| shape, tokens | nblocks x rank (middle) | dtype | bmm reference | structmat bmm | structmat torch "
        "(expanded when middle <= 32) | structmat Triton | floor | eager: bmm reference / Triton |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = r["bmm reference"]
        cells = " | ".join(f"{r[c] * 1e3:.0f} us ({ref / r[c]:.2f}x)" for c in CASES)
        eager = f"{r['bmm reference (eager)'] * 1e3:.0f} / {r['structmat Triton (eager)'] * 1e3:.0f} us"
        lines.append(
            f"| {r['shape']}, {r['tokens']} | {r['nblocks']} x {r['rank']} ({r['nblocks'] * r['rank']}) | "
            f"{r['dtype']} | {cells} | {r['floor_ms'] * 1e3:.0f} us | {eager} |"
        )
    return "\n".join(lines)


def launch_overhead(width: int, calls: int = 1000) -> None:
    """Host microseconds per call of the kernel's launch and of a small matmul, ``calls`` calls
    queued on 16 rows (the GPU's work is negligible, so the host's cost shows)."""
    import time

    m = Monarch(width, width, 4, 4, device=DEVICE)
    x = torch.randn(16, width, device=DEVICE)
    w1, w2t = tk.kernel_layout(m.blkdiag1.detach(), m.blkdiag2.detach())
    r = m.blkdiag1.detach().reshape(-1, width // 4)
    for name, fn in {
        "triton launch": lambda: tk.launch(x, w1, w2t, False, None, tk.DEFAULT_CONFIG),
        "triton_multiply (no grad)": lambda: tk.triton_multiply(x, m.blkdiag1, m.blkdiag2),
        "torch.matmul": lambda: x[:, : r.shape[1]] @ r.T,
    }.items():
        with torch.no_grad():
            fn()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
        print(f"host time per call, {name}: {(time.perf_counter() - t0) / calls * 1e6:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (run with TRITON_INTERPRET=1)")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_triton.json"))
    args = ap.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE, shapes, big, ranks, tokens, sweep_ranks = "cpu", [(64, 64)], 64, [1, 2], [40], [1]
    elif not torch.cuda.is_available():
        sys.exit("bench_triton.py needs a CUDA device")
    else:
        shapes, big, ranks, tokens, sweep_ranks = SHAPES, 4096, [1, 4, 8], [512, 4096], [1, 4, 8]
    print(environment())
    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
    half = torch.float16 if args.smoke else torch.bfloat16  # the interpreter has no bfloat16 dot
    for dtype in (torch.float32, half):
        for rank in ranks:
            print(accuracy(big, big, big, rank, dtype))
    print(
        accuracy(
            768 // (big // 64 if args.smoke else 1), 3072 // (big // 64 if args.smoke else 1), 777, 3, torch.float32
        )
    )
    config = dict(tk.DEFAULT_CONFIG)
    if not args.no_sweep:
        print(f"sweep at {big}x{big}, {big} tokens:")
        config = sweep(big, big, big, sweep_ranks, smoke=args.smoke)
    print(f"config: {json.dumps(config)}")
    rows = table(shapes, ranks, tokens, torch.float32, bw, config)
    rows += table(shapes[-2:-1] if not args.smoke else shapes, ranks[1:2], tokens[-1:], half, bw, config)
    # middles wider than the expanded path's 32: 64 and 128, where 'auto' takes the kernel
    for nblocks in (8, 16):
        rows += table(shapes[::2], [8 if not args.smoke else 1], tokens[-1:], torch.float32, bw, config, nblocks)
    launch_overhead(big, 2 if args.smoke else 1000)
    out = pathlib.Path(args.out)
    out.write_text(json.dumps({"env": environment(), "config": config, "rows": rows}, indent=1))
    baseline = "the bmm reference of bench_multiply.py (ratios: times faster than it); floor: bytes / copy bandwidth"
    out.with_suffix(".md").write_text(f"{header(command_line(), baseline)}\n{markdown(rows)}\n")
    key = [r for r in rows if r["shape"] == f"{big}x{big}" and r["tokens"] == tokens[-1] and r["nblocks"] == 4]
    key = [r for r in key if r["dtype"] == "float32"]
    worst = min(r["bmm reference"] / r["structmat Triton"] for r in key)
    print(
        f"\n{tokens[-1]} tokens x {big}x{big} float32: Triton at least {worst:.2f}x faster "
        f"than the bmm reference (ranks {ranks})"
    )


if __name__ == "__main__":
    main()
