"""The ``structmat`` command line: ``structmat demo`` (and the other subcommands)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable

import torch


def _integer(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo`` (else an argparse error, exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def _number(accepts: Callable[[float], bool], description: str) -> Callable[[str], float]:
    """An argparse type: a number for which ``accepts`` holds (``description`` says which)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}")
        return value

    parse.__name__ = description
    return parse


_positive_float = _number(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_probability = _number(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")  # a dropout probability


def _prepare_out_file(parser: argparse.ArgumentParser, option: str, path: str | None) -> None:
    """Fail before any work when ``path`` cannot be written as a file; create its folder."""
    if path is None:
        return
    if os.path.isdir(path):
        parser.error(f"{option} {path!r} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    _prepare_out_folder(parser, option, folder, named=f"{option} {path!r}: its folder {folder!r}")
    if os.path.exists(path):
        try:
            open(path, "a").close()  # append mode: the file is left as it is
        except OSError as err:
            parser.error(f"{option} {path!r}: cannot write the file ({err.strerror})")


def _prepare_out_folder(
    parser: argparse.ArgumentParser, option: str, path: str | None, named: str | None = None
) -> None:
    """Fail before any work when ``path`` cannot be a folder to write into; create it.

    Writing is tried (a temporary file, removed again): ``os.access`` says yes for root in
    folders that refuse every new file, such as ``/proc`` or a read-only mount. ``named``: how
    the error names the folder (default: the option and ``path``)."""
    if path is None:
        return
    named = named or f"{option} {path!r}"
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"{named} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        parser.error(f"{named}: cannot create the folder ({err.strerror})")
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".structmat-write-check-")
    except OSError as err:
        parser.error(f"{named}: cannot write files there ({err.strerror})")
    os.close(fd)
    os.remove(probe)


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


def _status(text: str) -> None:
    """A line on stderr saying what a long job does now (rank 0 only under torchrun)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"structmat: {text}", file=sys.stderr, flush=True)


def _report(args: argparse.Namespace) -> int:
    from .report import run_report

    _status(f"report into {args.out!r} ({'seconds' if args.quick else 'a few minutes'}); progress on stderr")
    result = run_report(args.out, quick=args.quick, progress=True)  # progress lines also in pipes and logs
    print(result["summary"])
    print(f"\nreport written to {result['path']} ({result['seconds']:.0f} s)")
    return 0


TASKS = {"minilm": ["rotten_tomatoes"], "smollm2": ["bigbench:arithmetic", "bigbench:strategyqa"]}
DEFAULT_TARGETS = {"minilm": "query,value", "smollm2": "q_proj,k_proj,v_proj"}


def _target_layers(parser: argparse.ArgumentParser, model: str, targets: str) -> dict[str, tuple[int, int]]:
    """The layers ``--targets`` names (as ``target_modules``: a layer whose dotted name is a name
    or ends with ``"." + name``); an argparse error listing the valid names for unknown ones."""
    from .models import ALL_LINEAR_SKIPS, linear_layers

    layers = linear_layers(model)
    if targets == "all-linear":
        return {n: s for n, s in layers.items() if n not in ALL_LINEAR_SKIPS.get(model, ())}
    names = [t.strip() for t in targets.split(",")]
    if not all(names):
        parser.error(f"--targets {targets!r} has an empty name; give comma-separated module names or all-linear")
    chosen = {n: s for n, s in layers.items() if any(n == t or n.endswith("." + t) for t in names)}
    unknown = [t for t in names if not any(n == t or n.endswith("." + t) for n in layers)]
    if unknown:
        leaves = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in layers))
        example = next(iter(layers))
        parser.error(
            f"--targets {','.join(unknown)}: no linear layer of --model {model} has that name; choose from "
            f"{leaves} (or all-linear, or a longer dotted suffix of a layer name such as {example})"
        )
    return chosen


def _check_finetune(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked before a model loads (argparse errors)."""
    from ..checks import check_useful_rank
    from ..monarch import MonarchShape

    task = args.task if args.task is not None else TASKS[args.model][0]
    if task not in TASKS[args.model]:
        parser.error(f"--task {task!r} is not available for --model {args.model}; choose from {TASKS[args.model]}")
    if args.method == "none" and args.model != "minilm":
        parser.error("--method none (head only) applies to --model minilm only")
    if args.method == "none" and args.save_adapter:
        parser.error("--save-adapter needs --method more or lora: --method none trains no adapter")
    if args.model == "minilm" and args.max_length > 512:
        parser.error(f"--max-length {args.max_length}: all-MiniLM-L6-v2 takes at most 512 tokens")
    if args.model_dropout is not None and args.model != "minilm":
        parser.error("--model-dropout applies to --model minilm only")
    targets = args.targets if args.targets is not None else DEFAULT_TARGETS[args.model]
    shapes = set(_target_layers(parser, args.model, targets).values())
    for in_f, out_f in sorted(shapes):
        try:
            if args.method == "more":
                MonarchShape.for_more(in_f, out_f, args.nblocks, args.rank)
            elif args.method == "lora":
                check_useful_rank(args.rank, min(in_f, out_f), f"a LoRA update of a ({out_f}, {in_f}) layer")
        except ValueError as err:
            parser.error(f"--rank {args.rank} / --nblocks {args.nblocks} do not fit a {in_f}->{out_f} layer: {err}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    _prepare_out_file(parser, "--out", args.out)
    _prepare_out_folder(parser, "--save-adapter", args.save_adapter)


def _check_report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _prepare_out_folder(parser, "--out", args.out)


def _finetune(args: argparse.Namespace) -> int:
    import json

    import torch.distributed as dist

    from .loop import world

    task = args.task if args.task is not None else TASKS[args.model][0]
    targets = args.targets if args.targets is not None else DEFAULT_TARGETS[args.model]
    targets = targets if targets == "all-linear" else tuple(t.strip() for t in targets.split(","))
    device = args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device == "cuda":  # one GPU per process, as torchrun / accelerate number them
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    common = dict(
        method=args.method, rank=args.rank, nblocks=args.nblocks, targets=targets, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, train_size=args.train_size, test_size=args.test_size, seed=args.seed,
        device=device, save_adapter=args.save_adapter, progress=True,  # progress lines also in pipes and logs
    )  # fmt: skip
    _status(f"finetune {args.model} on {task}, {args.method} rank {args.rank}: loading the model and data")
    if args.model == "smollm2":
        from .causal import CausalConfig, run_causal

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
        dist.barrier()  # leave together: rank 0 may still be writing; a rank gone early can abort gloo
        dist.destroy_process_group()
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from .sweep import run_sweeps, selected, status

    sweeps = selected(args.sweeps, args.tiny, getattr(args, "device", None))
    out = Path(args.out)
    if args.action == "run":
        run_sweeps(sweeps, out, lambda line: print(line, flush=True))
    elif args.action == "status":
        for sweep in sweeps:
            print(status(sweep, out))
    else:
        from .sweep import sweep_records
        from .tables import write_tables

        command = " ".join(["structmat sweep", *(args.argv or sys.argv[2:])])
        for sweep in sweeps:
            records = sweep_records(sweep, out)
            if not records:
                print(f"{sweep.name}: no records under {out}", file=sys.stderr)
                continue
            print(f"{sweep.name}: {write_tables(sweep, records, Path(args.results), command=command)}")
    return 0


def _check_sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .sweep import SWEEPS

    unknown = [n for n in args.sweeps if n not in SWEEPS]
    if unknown:
        parser.error(f"unknown sweeps {unknown}; choose from {sorted(SWEEPS)}")
    if args.action == "run" and not args.sweeps:
        parser.error("sweep run needs the sweeps to run (e.g. rt)")
    if args.action == "run" and args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; an option without one (``None``) says in its
    own help what happens when it is not given, instead of "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``structmat`` command line: one subparser per command."""
    parser = argparse.ArgumentParser(prog="structmat", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="fit the three structures to a matrix and print a table", formatter_class=_HelpFormatter
    )
    demo.add_argument("--size", type=_integer(16), default=256, help="matrix size n (n x n), at least 16")
    demo.add_argument("--seed", type=_integer(0), default=0, help="random seed of the target matrix")
    demo.set_defaults(func=_demo, check=None, parser=demo)
    rep = sub.add_parser(
        "report",
        help="the expressivity study: markdown report with figures (main job)",
        formatter_class=_HelpFormatter,
    )
    rep.add_argument("--out", default="report", help="output folder")
    rep.add_argument(
        "--quick", action="store_true", help="small sizes: 64x64 targets and MiniLM's layers, no SmolLM2 (fast)"
    )
    rep.set_defaults(func=_report, check=_check_report, parser=rep)
    ft = sub.add_parser(
        "finetune",
        help="fine-tune offline with MoRe or LoRA: MiniLM on Rotten Tomatoes, or SmolLM2 on BIG-bench",
        description="Also runs under torchrun: torchrun --nproc-per-node 2 -m structmat.experiments finetune ... "
        "Example: structmat finetune --model smollm2 --task bigbench:arithmetic --rank 4 --lr 1e-2",
        formatter_class=_HelpFormatter,
    )
    ft.add_argument("--model", choices=sorted(TASKS), default="minilm", help="the pretrained model")
    ft.add_argument(
        "--task",
        default=None,
        help="minilm: rotten_tomatoes; smollm2: bigbench:arithmetic or bigbench:strategyqa "
        "(default: the first of these for the model)",
    )
    ft.add_argument(
        "--method", choices=["more", "lora", "none"], default="more", help="the adapter (none: train the head only)"
    )
    ft.add_argument("--rank", type=_integer(1), default=1, help="MoRe block rank / LoRA rank")
    ft.add_argument("--nblocks", type=_integer(1), default=4, help="MoRe: number of blocks")
    ft.add_argument(
        "--targets",
        default=None,
        help="comma-separated names of the linear layers to adapt, or all-linear (default: query,value for "
        "minilm, q_proj,k_proj,v_proj for smollm2)",
    )
    ft.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate (AdamW, linear schedule)")
    ft.add_argument("--epochs", type=_integer(1), default=1, help="passes over the training examples")
    ft.add_argument("--batch-size", type=_integer(1), default=32, help="examples per step (all ranks together)")
    ft.add_argument("--max-length", type=_integer(1), default=64, help="minilm: tokens per review")
    ft.add_argument(
        "--model-dropout",
        type=_probability,
        default=None,
        help="minilm: the model's own hidden/attention dropout (default: its 0.1; 0 for deterministic runs)",
    )
    ft.add_argument("--train-size", type=_integer(1), default=3000, help="training examples (up to the split's size)")
    ft.add_argument("--test-size", type=_integer(1), default=1000, help="test examples (up to the split's size)")
    ft.add_argument("--seed", type=_integer(0), default=0, help="random seed (data order, adapter initialisation)")
    ft.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where to train (DDP uses gloo on cpu, nccl on cuda)"
    )
    ft.add_argument("--out", help="write the result as JSON here (default: printed only)")
    ft.add_argument(
        "--save-adapter",
        metavar="DIR",
        help="save the trained adapter into DIR (MoRe: structmat.adapters.load_adapter/from_pretrained "
        "read it; LoRA: PEFT's format) (default: not saved)",
    )
    ft.set_defaults(func=_finetune, check=_check_finetune, parser=ft)
    sw = sub.add_parser(
        "sweep",
        help="MoRe vs LoRA sweeps: tuned learning rates, many seeds, one record per run (resumable)",
        description="structmat sweep run rt | status | tables: see structmat/experiments/sweep.py for the protocol",
        formatter_class=_HelpFormatter,
    )
    sw.add_argument("action", choices=["run", "status", "tables"], help="run the missing runs, count them, or "
                    "write the tables from the records")  # fmt: skip
    sw.add_argument("sweeps", nargs="*", help="rt, tweets, arith, reference (default for status/tables: all)")
    sw.add_argument("--out", default=str(_results() / "runs"), help="folder of the run records")
    sw.add_argument("--results", default=str(_results()), help="where tables go")
    sw.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test of the whole protocol")
    sw.add_argument("--device", choices=["cpu", "cuda"], default=None, help="run on this device (default: the sweep's)")
    sw.set_defaults(func=_sweep, check=_check_sweep, parser=sw, argv=None)
    return parser


def _results():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in args.parser._actions:  # argparse (3.11) turns "--size=--" into [] without calling the type
        if action.nargs is None and action.type is not None and isinstance(getattr(args, action.dest, None), list):
            args.parser.error(f"argument {'/'.join(action.option_strings)}: expected one value")
    if args.check is not None:  # argparse errors (exit status 2) before any model loads or work starts
        args.check(args.parser, args)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
