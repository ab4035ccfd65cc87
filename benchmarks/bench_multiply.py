"""Forward+backward time and memory of the Monarch multiply against baselines, same run.

    python benchmarks/bench_multiply.py            # CPU (and CUDA when present)
    python benchmarks/bench_multiply.py --quick    # two small shapes
    python benchmarks/bench_multiply.py --device cuda --out benchmarks/results/bench_multiply_cuda.json

(a) structmat ``Monarch`` (on CUDA with triton installed: the fused Triton kernel) (b) a
straightforward bmm reference written here from docs/monarch-math.md (c) ``LowRank`` with the
same parameter count (d) dense ``nn.Linear``.
Ratios are against (b), measured in the same run: best of at least 5 rounds (more, up to 50,
until the slowest case has run 2 s), the four cases interleaved within each round. Backward gets a
dense upstream gradient, as inside a network (``.sum()`` would hand every case a stride-0
gradient that matmuls first copy). On CPU the process keeps freed memory
(``_timing.quiet_allocator``; ``--system-malloc`` leaves glibc's default, whose page faults
were a third to a half of the CPU time, vmstat's ``sy`` column, and most of the noise).
Memory: bytes saved for backward (activations) on CPU, ``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, interleaved_rounds, quiet_allocator, write_results  # noqa: E402

from structmat import LowRank, Monarch  # noqa: E402
from structmat.experiments.loop import saved_tensor_bytes  # noqa: E402

SHAPES = [(768, 768), (768, 3072), (4096, 4096), (4096, 11008)]  # (in, out)


def reference_bmm(x, blkdiag1, blkdiag2):
    """The four steps of the doc with bmm, written independently of structmat."""
    k, q, p = blkdiag1.shape
    l, s, r = blkdiag2.shape
    n = x.shape[0]
    h = torch.bmm(x.reshape(n, k, p).transpose(0, 1), blkdiag1.transpose(-1, -2))  # (k, n, q)
    h = h.transpose(0, 1).reshape(n, r, l).permute(2, 0, 1).contiguous()  # j = c*l + d -> (l, n, r)
    y = torch.bmm(h, blkdiag2.transpose(-1, -2))  # (l, n, s)
    return y.permute(1, 2, 0).reshape(n, l * s)


def train_step(fn, x):
    """One forward+backward of ``fn`` on ``x`` with a fixed dense upstream gradient (timed)."""
    grad = []

    def step():
        x.grad = None
        y = fn(x)
        if not grad:
            grad.append(torch.randn_like(y))
        y.backward(grad[0])

    return step


def memory(fn, x, device, exclude=()):
    """Bytes saved for backward (CPU, exact) or peak allocated bytes (CUDA) of one step."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(fn, x)()
        return torch.cuda.max_memory_allocated() - base
    params = list(fn.parameters()) if isinstance(fn, nn.Module) else list(exclude)
    return saved_tensor_bytes(lambda: fn(x), exclude=params)


def measure(
    cases: dict, x, device, exclude=(), min_seconds: float = 2.0, rounds: int = 5, max_rounds: int = 50
) -> dict:
    """``{name: (best seconds, bytes, seconds per round)}``; the cases' timings are interleaved
    (see ``interleaved_rounds``: at least ``rounds`` rounds, more until the slowest case has run
    ``min_seconds``, at most ``max_rounds``)."""
    steps = {name: train_step(fn, x) for name, fn in cases.items()}
    times = interleaved_rounds(steps, device, rounds, min_seconds, max_rounds)
    return {name: (min(times[name]), memory(fn, x, device, exclude), times[name]) for name, fn in cases.items()}


def run(device: str, shapes, tokens_list, ranks, min_seconds: float = 2.0) -> list[dict]:
    rows = []
    for in_f, out_f in shapes:
        for tokens in tokens_list:
            x = torch.randn(tokens, in_f, device=device, requires_grad=True)
            dense = nn.Linear(in_f, out_f, bias=False, device=device)
            for rank in ranks:
                m = Monarch(in_f, out_f, 4, rank, device=device)
                lr = LowRank(in_f, out_f, rank, device=device)
                cases = {
                    "bmm reference": lambda x, m=m: reference_bmm(x, m.blkdiag1, m.blkdiag2),
                    "structmat Monarch": m,
                    "LowRank (same params)": lr,
                    "dense nn.Linear": dense,
                }
                res = measure(cases, x, device, exclude=list(m.parameters()), min_seconds=min_seconds)
                t_ref, m_ref, _ = res["bmm reference"]
                for name, (t, mem, _) in res.items():
                    rows.append(
                        {
                            "device": device,
                            "in": in_f,
                            "out": out_f,
                            "tokens": tokens,
                            "rank": rank,
                            "case": name,
                            "seconds": t,
                            "bytes": mem,
                            "time_ratio": t / t_ref,
                            "mem_ratio": mem / m_ref if m_ref else float("nan"),
                        }
                    )
                print(
                    f"[{device}] {in_f}x{out_f} tokens={tokens} rank={rank}: "
                    + ", ".join(
                        f"{name} {t * 1e3:.2f} ms ({t / t_ref:.2f}x, mem {mem / m_ref:.2f}x)"
                        for name, (t, mem, _) in res.items()
                    ),
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    """The README's markdown table of a run's rows."""
    lines = [
        "| device | shape (in x out), tokens | rank | bmm reference | structmat Monarch | LowRank (same params) |"
        " dense nn.Linear |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["device"], r["in"], r["out"], r["tokens"], r["rank"]), {})[r["case"]] = r
    for (dev, i, o, t, rank), g in groups.items():
        ratios = " | ".join(f"{g[c]['time_ratio']:.2f}x" for c in list(g)[1:])
        lines.append(f"| {dev} | {i}x{o}, {t} | {rank} | {g['bmm reference']['seconds'] * 1e3:.2f} ms | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="all: CPU, and CUDA when present")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator settings as they are")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_multiply.json"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    if not args.system_malloc:
        quiet_allocator()
    shapes, tokens, ranks = (SHAPES[:2], [512], [1, 4]) if args.quick else (SHAPES, [512, 4096], [1, 4, 8])
    print(environment())
    min_seconds = 0.0 if args.quick else 2.0
    rows = run("cpu", shapes, tokens, ranks, min_seconds) if args.device in ("all", "cpu") else []
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        rows += run("cuda", shapes, tokens, ranks, min_seconds)
    worst = max(r["time_ratio"] for r in rows if r["case"] == "structmat Monarch")
    print(f"\nworst structmat Monarch / bmm reference time ratio: {worst:.3f}")
    baseline = "the bmm reference written here from docs/monarch-math.md (in ms; other columns: multiples of it)"
    write_results(args.out, rows, command_line(), table(rows), baseline)


if __name__ == "__main__":
    main()
