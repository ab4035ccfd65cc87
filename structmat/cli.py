"""The ``structmat`` command line: ``structmat demo`` (and the other subcommands)."""

from __future__ import annotations

import argparse
import time

import torch


def _demo(args: argparse.Namespace) -> int:
    from . import fit_butterfly, fit_lowrank, fit_monarch

    n = args.size
    g = torch.Generator().manual_seed(args.seed)
    # A target with structure in it: a smooth low-rank part plus a Hadamard-like mixing part.
    low = torch.randn(n, 8, generator=g) @ torch.randn(8, n, generator=g) / 8
    noise = torch.randn(n, n, generator=g) / n**0.5
    W = low + noise
    print(f"Fitting a {n}x{n} matrix (rank-8 signal + Gaussian noise); relative Frobenius error:")
    print(f"{'structure':34s} {'params':>8s} {'max rank':>8s} {'rel. error':>10s} {'seconds':>8s}")
    fits = [
        ("LowRank(rank=4)", lambda: fit_lowrank(W, 4)),
        ("Monarch(nblocks=4, rank=4)", lambda: fit_monarch(W, 4, 4)),
        ("LowRank(rank=16)", lambda: fit_lowrank(W, 16)),
        ("Monarch(nblocks=4, rank=16)", lambda: fit_monarch(W, 4, 16)),
        ("Butterfly", lambda: fit_butterfly(W, steps=300, lbfgs_steps=0, restarts=2, progress=False)),
    ]
    for name, fit in fits:
        t0 = time.perf_counter()
        m = fit()
        dt = time.perf_counter() - t0
        print(f"{name:34s} {m.num_params:8d} {m.max_rank:8d} {m.fit_error.item():10.4f} {dt:8.2f}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .analysis.report import run_report

    result = run_report(args.out, quick=args.quick)
    print(result["summary"])
    print(f"\nreport written to {result['path']} ({result['seconds']:.0f} s)")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    import json
    import os

    import torch.distributed as dist

    from .finetune import FinetuneConfig, run_classification
    from .finetune.loop import world

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    cfg = FinetuneConfig(
        method=args.method,
        rank=args.rank,
        nblocks=args.nblocks,
        targets=tuple(args.targets.split(",")),
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        train_size=args.train_size,
        test_size=args.test_size,
        seed=args.seed,
    )
    result = run_classification(cfg)
    if world()[0] == 0:
        print(
            f"{cfg.method} rank={cfg.rank}: accuracy {result['accuracy']:.4f}, trainable params "
            f"{result['trainable_params']:,d} (adapter {result['adapter_params']:,d}), step "
            f"{result['median_step_seconds']:.3f} s, training memory {result['train_memory_mb']:.1f} MB"
        )
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="structmat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit the three structures to a matrix and print a table")
    demo.add_argument("--size", type=int, default=256, help="matrix size n (n x n), default 256")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    rep = sub.add_parser("report", help="the expressivity study: markdown report with figures (main job)")
    rep.add_argument("--out", default="report", help="output folder (default: ./report)")
    rep.add_argument("--quick", action="store_true", help="small sizes, synthetic targets only (seconds)")
    rep.set_defaults(func=_report)
    ft = sub.add_parser(
        "finetune",
        help="fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes (offline) with MoRe or LoRA",
        description="Also runs under torchrun: torchrun --nproc-per-node 2 -m structmat.finetune ...",
    )
    ft.add_argument("--method", choices=["more", "lora", "none"], default="more")
    ft.add_argument("--rank", type=int, default=1, help="MoRe block rank / LoRA rank")
    ft.add_argument("--nblocks", type=int, default=4)
    ft.add_argument("--targets", default="query,value", help="comma-separated target module names")
    ft.add_argument("--lr", type=float, default=2e-3)
    ft.add_argument("--epochs", type=int, default=1)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--max-length", type=int, default=64)
    ft.add_argument("--train-size", type=int, default=3000)
    ft.add_argument("--test-size", type=int, default=1000)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to train (DDP uses gloo on cpu, nccl on cuda)"
    )
    ft.add_argument("--out", help="write the result as JSON here")
    ft.set_defaults(func=_finetune)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
