"""The ``structmat`` command line: ``structmat demo`` (and the other subcommands)."""

from __future__ import annotations

import argparse
import time

import torch


def _demo(args: argparse.Namespace) -> int:
    from .. import fit_butterfly, fit_lowrank, fit_monarch

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
    from .report import run_report

    result = run_report(args.out, quick=args.quick)
    print(result["summary"])
    print(f"\nreport written to {result['path']} ({result['seconds']:.0f} s)")
    return 0


TASKS = {"minilm": ["rotten_tomatoes"], "smollm2": ["bigbench:arithmetic", "bigbench:strategyqa"]}
DEFAULT_TARGETS = {"minilm": "query,value", "smollm2": "q_proj,k_proj,v_proj"}


def _finetune(args: argparse.Namespace) -> int:
    import json
    import os

    import torch.distributed as dist

    from .loop import world

    task = args.task or TASKS[args.model][0]
    if task not in TASKS[args.model]:
        raise SystemExit(f"--task {task!r} is not available for --model {args.model}; choose from {TASKS[args.model]}")
    targets = args.targets or DEFAULT_TARGETS[args.model]
    targets = targets if targets == "all-linear" else tuple(targets.split(","))
    device = args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device == "cuda":  # one GPU per process, as torchrun / accelerate number them
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    common = dict(
        method=args.method, rank=args.rank, nblocks=args.nblocks, targets=targets, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, train_size=args.train_size, test_size=args.test_size, seed=args.seed,
        device=device, save_adapter=args.save_adapter,
    )  # fmt: skip
    if args.model == "smollm2":
        from .causal import CausalConfig, run_causal

        if args.method == "none":
            raise SystemExit("--method none (head only) applies to --model minilm only")
        cfg = CausalConfig(task=task.split(":", 1)[1], evaluate_before=True, **common)
        result = run_causal(cfg)
    else:
        from .classify import FinetuneConfig, run_classification

        cfg = FinetuneConfig(max_length=args.max_length, model_dropout=args.model_dropout, **common)
        result = run_classification(cfg)
    if world()[0] == 0:  # the evaluation ran on rank 0 only; the other ranks have no metric
        if args.model == "smollm2":
            metric = f"exact match {result['exact_match_before']:.3f} -> {result['exact_match']:.3f}"
        else:
            metric = f"accuracy {result['accuracy']:.4f}"
        print(
            f"{cfg.method} rank={cfg.rank}: {metric}, trainable params {result['trainable_params']:,d}, "
            f"step {result['median_step_seconds']:.3f} s, training memory {result['train_memory_mb']:.1f} MB"
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
        help="fine-tune offline with MoRe or LoRA: MiniLM on Rotten Tomatoes, or SmolLM2 on BIG-bench",
        description="Also runs under torchrun: torchrun --nproc-per-node 2 -m structmat.experiments finetune ... "
        "Example: structmat finetune --model smollm2 --task bigbench:arithmetic --rank 4 --lr 1e-2",
    )
    ft.add_argument("--model", choices=sorted(TASKS), default="minilm")
    ft.add_argument(
        "--task",
        default=None,
        help="minilm: rotten_tomatoes; smollm2: bigbench:arithmetic (default) or bigbench:strategyqa",
    )
    ft.add_argument("--method", choices=["more", "lora", "none"], default="more")
    ft.add_argument("--rank", type=int, default=1, help="MoRe block rank / LoRA rank")
    ft.add_argument("--nblocks", type=int, default=4)
    ft.add_argument(
        "--targets",
        default=None,
        help="comma-separated target module names, or all-linear (default: query,value for minilm, "
        "q_proj,k_proj,v_proj for smollm2)",
    )
    ft.add_argument("--lr", type=float, default=2e-3)
    ft.add_argument("--epochs", type=int, default=1)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--max-length", type=int, default=64, help="minilm: tokens per review")
    ft.add_argument(
        "--model-dropout",
        type=float,
        default=None,
        help="minilm: the model's own hidden/attention dropout (default: its 0.1; 0 for deterministic runs)",
    )
    ft.add_argument("--train-size", type=int, default=3000, help="training examples (up to the split's size)")
    ft.add_argument("--test-size", type=int, default=1000, help="test examples (up to the split's size)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to train (DDP uses gloo on cpu, nccl on cuda)"
    )
    ft.add_argument("--out", help="write the result as JSON here")
    ft.add_argument(
        "--save-adapter",
        metavar="DIR",
        help="save the trained adapter into DIR (MoRe: structmat.adapters.load_adapter/from_pretrained "
        "read it; LoRA: PEFT's format)",
    )
    ft.set_defaults(func=_finetune)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
