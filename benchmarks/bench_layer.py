"""What an adapter costs over the frozen layer it sits on (issue #29 item 1).

    python benchmarks/bench_layer.py            # 5 shapes x 512/4096 tokens x rank 1/4 (about 20 min, 2 cores)
    python benchmarks/bench_layer.py --quick    # the smoke test
    python benchmarks/bench_layer.py --shape 4096x4096 --tokens 4096 --rank 4      # one row again
    python benchmarks/bench_layer.py --device cuda --dtype bfloat16               # on a GPU

For each shape (in x out), token count and rank, one training step (forward + backward with a dense
upstream gradient; the input requires grad, the adapter's factors get gradients, W is frozen) of:

- **floor**: the frozen ``nn.Linear`` alone: what any adapter must pay;
- **MoRe**: ``MoReLinear`` with 4 blocks of rank r (the fused frozen+update node);
- **LoRA fused**: ``MoReLinear(structure="lowrank")``, LoRA of rank r through the same fused layer
  (the same trainable parameters as MoRe: ``r * (in + out)``);
- **PEFT LoRA**: PEFT's ``lora.Linear`` of rank r;
- **reference**: the MoRe reference code's algorithm, ``base(x) + monarch(x)`` with its
  hand-written autograd Function (``reference_monarch.py``).

Timed in interleaved rounds (at least 7, each case once per round, the order reversed every other
round). Each adapter's **overhead** is the median over rounds of ``its time / the floor's time`` in
that round, minus 1 (a slow stretch of the shared machine divides out of a round). Memory: bytes
saved for backward plus the trainable gradients (CPU, counted exactly), or
``max_memory_allocated`` (CUDA); **memory over the floor** is that minus the floor's.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, interleaved_rounds, quiet_allocator, write_results  # noqa: E402
from bench_multiply import memory, train_step  # noqa: E402
from reference_monarch import ReferenceMoReLayer  # noqa: E402

from structmat.adapters import MoReLinear  # noqa: E402

SHAPES = [(768, 768), (768, 3072), (3072, 768), (4096, 4096), (4096, 11008)]  # (in, out)
CASES = ("MoRe", "LoRA fused", "PEFT LoRA", "reference")
MIN_ROUNDS = 7
MAX_ROUNDS = 60
MIN_SECONDS = 20.0  # more rounds for the fast cases, until the slowest has run this long


def peft_lora(base: nn.Linear, rank: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    holder = nn.Sequential()
    holder.add_module("lin", base)
    model = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["lin"]))
    layer = model.base_model.model.lin
    with torch.no_grad():  # a non-zero update, as after training
        layer.lora_B["default"].weight.normal_(0, 0.01)
    return layer


def fused(base: nn.Linear, rank: int, structure: str) -> MoReLinear:
    layer = MoReLinear(base, structure=structure, nblocks=4, rank=rank)
    with torch.no_grad():  # a non-zero update, as after training
        for p in layer.update.parameters():
            p.normal_(0, 0.01)
    return layer


def parse_shape(text: str) -> tuple[int, int]:
    """``"768x3072"`` -> ``(768, 3072)``."""
    try:
        in_f, out_f = (int(v) for v in text.lower().split("x"))
    except ValueError:
        in_f = out_f = 0
    if in_f < 1 or out_f < 1:
        raise argparse.ArgumentTypeError(f"--shape must be INxOUT of positive sizes, e.g. 768x768, got {text!r}")
    return in_f, out_f


def positive_int(text: str) -> int:
    """``--tokens`` and ``--rank``: an integer of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def row_of(device, dtype, in_f, out_f, tokens, rank, times, mems, params) -> dict:
    floor = times["floor"]
    row = {
        "device": device, "dtype": dtype, "in": in_f, "out": out_f, "tokens": tokens, "rank": rank,
        "params": params, "rounds": len(floor), "floor_s": statistics.median(floor),
        "floor_bytes": mems["floor"],
    }  # fmt: skip
    for case in CASES:
        row[f"{case}_s"] = statistics.median(times[case])
        row[f"{case}_overhead"] = statistics.median(t / f for t, f in zip(times[case], floor, strict=True)) - 1
        row[f"{case}_extra_bytes"] = mems[case] - mems["floor"]
    return row


def table(rows: list[dict]) -> str:
    """The markdown table: the floor's time, each adapter's overhead over it, memory over it."""
    head = " | ".join(f"{c} overhead" for c in CASES)
    mem = " | ".join(f"{c} MB over floor" for c in CASES)
    lines = [
        f"| device | shape (in x out) | tokens | rank (params) | floor ms | {head} | MoRe − LoRA fused | {mem} |",
        "|---|---|---|---|---|" + "---|" * (2 * len(CASES) + 1),
    ]
    for r in rows:
        over = " | ".join(f"{100 * r[f'{c}_overhead']:+.1f}%" for c in CASES)
        mb = " | ".join(f"{r[f'{c}_extra_bytes'] / 2**20:.2f}" for c in CASES)
        diff = 100 * (r["MoRe_overhead"] - r["LoRA fused_overhead"])
        lines.append(
            f"| {r['device']} {r['dtype']} | {r['in']}x{r['out']} | {r['tokens']} | {r['rank']} ({r['params']:,d}) | "
            f"{r['floor_s'] * 1e3:.1f} | {over} | {diff:+.1f} points | {mb} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator settings as they are")
    ap.add_argument("--shape", action="append", type=parse_shape, help="INxOUT, e.g. 768x768 (repeatable)")
    ap.add_argument("--tokens", action="append", type=positive_int, help="token count (repeatable)")
    ap.add_argument("--rank", action="append", type=positive_int, help="rank (repeatable)")
    ap.add_argument("--rounds", type=positive_int, default=MIN_ROUNDS, help="at least this many interleaved rounds")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="all: CPU, and CUDA when present")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="layer and input")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_layer.json"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    dtype = getattr(torch, args.dtype)
    if not args.system_malloc:
        quiet_allocator()
    shapes, tokens_list, ranks = (SHAPES[:2], [512], [1]) if args.quick else (SHAPES, [512, 4096], [1, 4])
    shapes, tokens_list, ranks = args.shape or shapes, args.tokens or tokens_list, args.rank or ranks
    rounds = 2 if args.quick else args.rounds
    devices = [d for d in ("cpu", "cuda") if args.device in (d, "all") and (d == "cpu" or torch.cuda.is_available())]
    print(environment())
    rows = []
    for device in devices:
        for in_f, out_f in shapes:
            base = nn.Linear(in_f, out_f, device=device, dtype=dtype).requires_grad_(False)
            for rank in ranks:
                cases = {
                    "floor": base,
                    "MoRe": fused(base, rank, "monarch"),
                    "LoRA fused": fused(base, rank, "lowrank"),
                    "PEFT LoRA": peft_lora(base, rank),
                    "reference": ReferenceMoReLayer(base, 4, rank),
                }
                params = sum(p.numel() for p in cases["MoRe"].parameters() if p.requires_grad)
                grads = {
                    n: sum(p.numel() * p.element_size() for p in m.parameters() if p.requires_grad)
                    for n, m in cases.items()
                }
                for tokens in tokens_list:
                    x = torch.randn(tokens, in_f, device=device, dtype=dtype, requires_grad=True)
                    steps = {name: train_step(layer, x) for name, layer in cases.items()}
                    times = interleaved_rounds(steps, device, rounds, 0.0 if args.quick else MIN_SECONDS, MAX_ROUNDS)
                    mems = {n: memory(m, x, device) + (grads[n] if device == "cpu" else 0) for n, m in cases.items()}
                    row = row_of(device, args.dtype, in_f, out_f, tokens, rank, times, mems, params)
                    rows.append(row)
                    print(
                        f"[{device} {args.dtype}] {in_f}x{out_f} tokens={tokens} rank={rank}: floor "
                        f"{row['floor_s'] * 1e3:.1f} ms, overhead "
                        + ", ".join(f"{c} {100 * row[f'{c}_overhead']:+.1f}%" for c in CASES)
                        + f" ({row['rounds']} rounds)",
                        flush=True,
                    )
    baseline = (
        "the frozen nn.Linear alone (the floor), timed in the same interleaved rounds; overheads are medians "
        "of per-round ratios to it"
    )
    write_results(args.out, rows, command_line(), table(rows), baseline)


if __name__ == "__main__":
    main()
