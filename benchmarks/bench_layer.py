"""MoReLinear (frozen dense + Monarch update) vs PEFT's LoRA layer at equal trainable parameters.

    python benchmarks/bench_layer.py            # all shapes, tokens 512 and 4096, rank 1/4/8
    python benchmarks/bench_layer.py --quick
    python benchmarks/bench_layer.py --shape 768x768 --tokens 512 --rank 8   # one row again
    STRUCTMAT_MONARCH_BACKEND=triton python benchmarks/bench_layer.py --device cuda --dtype bfloat16

Both wrap the same frozen ``nn.Linear``; MoRe has nblocks 4 and block rank r, LoRA rank r
(both ``r*(in+out)`` trainable parameters). Forward+backward with an input that requires
grad and a dense upstream gradient (as inside a network), timed as in ``bench_multiply.py``
(at least 10 interleaved rounds, more, up to 200, until the slower layer has run 150 s; CPU allocator
kept quiet unless ``--system-malloc``). Two time ratios MoRe / LoRA: best round over best round, and
the median over rounds of the ratio of the two back-to-back steps of a round (a slow stretch of a
shared machine divides out of it). Memory: bytes saved for backward plus gradients of the
trainable parameters (CPU); ``max_memory_allocated`` on CUDA. Ratios MoRe / LoRA, same run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, median_ratio, quiet_allocator, write_results  # noqa: E402
from bench_multiply import SHAPES, measure  # noqa: E402

from structmat.adapters import MoReLinear  # noqa: E402

# At least MIN_ROUNDS rounds, more (up to MAX_ROUNDS) until the slower layer has run MIN_SECONDS:
# the frozen matmul is most of every step, so the adapters' difference is a few percent, while on
# the 2-core machine of the README the same step varies far more (the frozen 4096x11008 layer
# alone, 4096 tokens: 5.9-9.2 s in 8 rounds), so it takes many samples to resolve. The cap was 50
# before: the 10 ms cases then stopped after 1 s, and their best-of ratio moved by +-5% from run
# to run (768x768, 512 tokens, rank 8: 1.053 in a full run capped at 50, 1.003-1.024 with 200-300).
MIN_ROUNDS = 10
MAX_ROUNDS = 200
MIN_SECONDS = 150.0


def lora_layer(base: nn.Linear, rank: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    holder = nn.Sequential()
    holder.add_module("lin", base)
    model = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["lin"]))
    layer = model.base_model.model.lin
    with torch.no_grad():  # a non-zero update, as after training
        layer.lora_B["default"].weight.normal_(0, 0.01)
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


def table(rows: list[dict]) -> str:
    """The README's markdown table of a run's rows."""
    lines = [
        "| device | shape (in x out) | tokens | rank (params) | MoRe ms | LoRA ms | time MoRe/LoRA (best) |"
        " time MoRe/LoRA (median of rounds) | memory MoRe/LoRA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} {r.get('dtype', 'float32')} | {r['in']}x{r['out']} | {r['tokens']} | "
            f"{r['rank']} ({r['params_more']:,d}) | "
            f"{r['more_s'] * 1e3:.1f} | {r['lora_s'] * 1e3:.1f} | {r['time_ratio']:.3f} | "
            f"{r['time_ratio_median']:.3f} | {r['mem_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator settings as they are")
    ap.add_argument("--shape", action="append", type=parse_shape, help="INxOUT, e.g. 768x768 (repeatable)")
    ap.add_argument("--tokens", action="append", type=positive_int, help="token count (repeatable)")
    ap.add_argument("--rank", action="append", type=positive_int, help="rank (repeatable)")
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="all: CPU, and CUDA when present")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="layer and input")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_layer.json"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    dtype = getattr(torch, args.dtype)
    if not args.system_malloc:
        quiet_allocator()
    shapes, tokens_list, ranks = (SHAPES[:2], [512], [1, 4]) if args.quick else (SHAPES, [512, 4096], [1, 4, 8])
    shapes, tokens_list, ranks = args.shape or shapes, args.tokens or tokens_list, args.rank or ranks
    devices = [d for d in ("cpu", "cuda") if args.device in (d, "all") and (d == "cpu" or torch.cuda.is_available())]
    print(environment())
    rows = []
    for device in devices:
        for in_f, out_f in shapes:
            base = nn.Linear(in_f, out_f, device=device, dtype=dtype).requires_grad_(False)
            for rank in ranks:
                more = MoReLinear(base, nblocks=4, rank=rank)
                with torch.no_grad():
                    more.monarch.blkdiag2.normal_(0, 0.01)
                lora = lora_layer(base, rank)
                n_more = sum(p.numel() for p in more.parameters() if p.requires_grad)
                n_lora = sum(p.numel() for p in lora.parameters() if p.requires_grad)
                grads_more = sum(p.numel() * p.element_size() for p in more.parameters() if p.requires_grad)
                grads_lora = sum(p.numel() * p.element_size() for p in lora.parameters() if p.requires_grad)
                for tokens in tokens_list:
                    x = torch.randn(tokens, in_f, device=device, dtype=dtype, requires_grad=True)
                    res = measure(
                        {"more": more, "lora": lora},
                        x,
                        device,
                        min_seconds=0.0 if args.quick else MIN_SECONDS,
                        rounds=5 if args.quick else MIN_ROUNDS,
                        max_rounds=MAX_ROUNDS,
                    )
                    (t_m, mem_m, rounds_m), (t_l, mem_l, rounds_l) = res["more"], res["lora"]
                    paired = median_ratio(rounds_m, rounds_l)
                    if device == "cpu":
                        mem_m, mem_l = mem_m + grads_more, mem_l + grads_lora
                    row = {
                        "device": device,
                        "dtype": args.dtype,
                        "in": in_f,
                        "out": out_f,
                        "tokens": tokens,
                        "rank": rank,
                        "params_more": n_more,
                        "params_lora": n_lora,
                        "more_s": t_m,
                        "lora_s": t_l,
                        "time_ratio": t_m / t_l,
                        "time_ratio_median": paired,
                        "rounds": len(rounds_m),
                        "more_bytes": mem_m,
                        "lora_bytes": mem_l,
                        "mem_ratio": mem_m / mem_l,
                    }
                    rows.append(row)
                    print(
                        f"[{device}] {in_f}x{out_f} tokens={tokens} rank={rank} params {n_more}/{n_lora}: "
                        f"MoRe {t_m * 1e3:.1f} ms, LoRA {t_l * 1e3:.1f} ms, time x{t_m / t_l:.3f} "
                        f"(median of {len(rounds_m)} rounds x{paired:.3f}), "
                        f"memory x{mem_m / mem_l:.3f}",
                        flush=True,
                    )
    worst_t = max(r["time_ratio"] for r in rows)
    worst_p = max(r["time_ratio_median"] for r in rows)
    worst_m = max(r["mem_ratio"] for r in rows)
    print(
        f"\nworst MoRe/LoRA time ratio {worst_t:.3f} (best rounds), {worst_p:.3f} (median of rounds); "
        f"worst memory ratio {worst_m:.3f}"
    )
    baseline = "PEFT's LoRA layer (rank r, the same trainable parameters) on the same frozen nn.Linear"
    write_results(args.out, rows, command_line(), table(rows), baseline)


if __name__ == "__main__":
    main()
