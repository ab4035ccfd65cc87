"""MoRe vs PEFT LoRA on a causal LM: SmolLM2-135M-Instruct (Llama architecture) fine-tuned on a
BIG-bench task, offline, CPU-sized (the MoRe paper's Llama comparison in miniature).

    python benchmarks/bench_reasoning.py                      # 8 configs x 3 seeds, ~25 min on 2 cores
    python benchmarks/bench_reasoning.py --task strategyqa    # the yes/no reasoning task
    python benchmarks/bench_reasoning.py --select-lr          # the learning-rate selection (validation)
    python benchmarks/bench_reasoning.py --scale 4 --device cuda   # more data/steps, e.g. on a GPU
    python benchmarks/bench_reasoning.py --quick              # tiny smoke test

Protocol (same for both methods):
- MoRe (nblocks 4, block rank 4 and 8) and LoRA (rank 8 and 32, alpha = 2*rank), each on
  q,k,v of all 30 layers (the paper's MoRe placement) and on all linear layers; same
  batches, same steps, same seeds; nothing else trained.
- Learning rate per method family from the same grid, chosen with ``--select-lr`` on a
  validation split carved from the training split (MoRe block rank 4 / LoRA rank 8 on q,k,v,
  seed 0); a run uses the rates in results/reasoning_lr_<task>.json when that file exists
  (else the defaults below, chosen that way on arithmetic), and records them.
- Exact match of greedy answers on the task's fixed test split, before (the base model) and
  after training; trainable parameters; step time and training memory (saved activations +
  gradients + AdamW state) as ratios to LoRA rank 8 on the same targets, measured in this run.
Results: benchmarks/results/reasoning_<task>.json and .md (``--select-lr``: reasoning_lr_<task>).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, header  # noqa: E402

from structmat.experiments.bigbench import LICENSE, load_bigbench  # noqa: E402
from structmat.experiments.causal import QKV, CausalConfig, exact_match, run_causal  # noqa: E402
from structmat.experiments.models import load_smollm2  # noqa: E402

TARGETS = {"qkv": QKV, "all-linear": "all-linear"}
CONFIGS = [(m, r, t) for t in TARGETS for m, r in (("more", 4), ("more", 8), ("lora", 8), ("lora", 32))]
DEFAULT_LR = {"more": 1e-2, "lora": 3e-3}  # from --select-lr on arithmetic, see results/reasoning_lr_*.md
LR_GRID = {"more": [3e-3, 1e-2, 3e-2], "lora": [1e-3, 3e-3, 1e-2]}
MAX_NEW_TOKENS = {"arithmetic": 6, "strategyqa": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arithmetic", choices=sorted(MAX_NEW_TOKENS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-size", type=int, default=400, help="training examples seen (times --scale)")
    ap.add_argument("--test-size", type=int, default=200, help="test examples (times --scale, up to the split)")
    ap.add_argument("--val-size", type=int, default=150, help="validation examples for --select-lr")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply training examples and test size")
    ap.add_argument("--lr-more", type=float, default=DEFAULT_LR["more"])
    ap.add_argument("--lr-lora", type=float, default=DEFAULT_LR["lora"])
    ap.add_argument("--select-lr", action="store_true", help="run the learning-rate selection instead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 configs, for a smoke test")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="METHOD:RANK:TARGETS",
        help="run only these configs, e.g. lora:32:all-linear (the ratios need lora:8 on the same targets)",
    )
    ap.add_argument("--out", default=None, help="output path without suffix (default results/reasoning_<task>)")
    args = ap.parse_args()
    if args.scale <= 0:
        ap.error(f"--scale must be positive, got {args.scale}")
    configs = CONFIGS
    if args.only:
        wanted = [tuple(c.split(":")) for c in args.only]
        configs = [c for c in CONFIGS if (c[0], str(c[1]), c[2]) in wanted]
        if len(configs) != len(wanted):
            ap.error(f"--only: each entry must be one of {[f'{m}:{r}:{t}' for m, r, t in CONFIGS]}")
    if args.quick:
        args.train_size, args.test_size, args.val_size, args.seeds, args.batch_size = 8, 8, 8, [0], 4
        configs = [("more", 4, "qkv"), ("lora", 8, "qkv")]
    t_start = time.time()
    env = environment() + f", device {args.device}"
    print(env)
    train_pool, test = load_bigbench(args.task)
    seen = max(1, round(args.train_size * args.scale))
    if args.select_lr:  # fit on the front of the training split, score on its tail
        train_pool, test = train_pool[: -args.val_size], train_pool[-args.val_size :]
    train_size = min(seen, len(train_pool))
    epochs = math.ceil(seen / train_size)
    test = test[: max(1, round(args.test_size * args.scale))]
    print(
        f"BIG-bench {args.task} ({LICENSE}): {train_size} training examples x {epochs} epoch(s), "
        f"{len(test)} {'validation' if args.select_lr else 'test'} examples"
    )
    pristine, tokenizer = load_smollm2()
    pristine.to(args.device)
    max_new = MAX_NEW_TOKENS[args.task]
    before = exact_match(pristine, tokenizer, args.task, test, max_new)
    print(f"base model exact match: {before:.3f}  [{time.time() - t_start:.0f}s]", flush=True)

    def run(method: str, rank: int, targets: str, lr: float, seed: int) -> dict:
        cfg = CausalConfig(
            task=args.task,
            method=method,
            rank=rank,
            targets=TARGETS[targets],
            lr=lr,
            epochs=epochs,
            batch_size=args.batch_size,
            train_size=train_size,
            test_size=len(test),
            max_new_tokens=max_new,
            seed=seed,
            device=args.device,
            progress=False,
        )
        r = run_causal(cfg, (train_pool, test), base=(copy.deepcopy(pristine), tokenizer))
        r["target_set"] = targets
        print(
            f"  {method:4s} rank={rank:<2d} {targets:10s} lr={lr:.0e} seed={seed}: exact match "
            f"{r['exact_match']:.3f}  params {r['trainable_params']:,d}  step {r['median_step_seconds']:.2f}s  "
            f"[{time.time() - t_start:.0f}s]",
            flush=True,
        )
        return r

    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / f"reasoning_{args.task}")
    if args.select_lr:
        out = out.with_name(out.name.replace("reasoning_", "reasoning_lr_"))
        selection = {}
        for method, rank in (("more", 4), ("lora", 8)):
            scores = {lr: run(method, rank, "qkv", lr, 0)["exact_match"] for lr in LR_GRID[method]}
            selection[method] = {"rank": rank, "val_exact_match_by_lr": scores, "chosen": max(scores, key=scores.get)}
        text = "\n".join(
            f"- {m} (rank {s['rank']}): validation exact match "
            + ", ".join(f"{em:.3f} at lr {lr:.0e}" for lr, em in s["val_exact_match_by_lr"].items())
            + f"; chosen {s['chosen']:.0e}"
            for m, s in selection.items()
        )
        print(text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"env": env, "args": vars(args), "selection": selection}))
        out.with_suffix(".md").write_text(
            f"{header(command_line(), 'none: validation exact match per learning rate')}Device: {args.device}  \n"
            f"{train_size} training / {len(test)} validation examples (both from the "
            f"training split), seed 0, q,k,v\n\n{text}\n"
        )
        return

    lrs = {"more": args.lr_more, "lora": args.lr_lora}
    chosen_file = out.with_name(out.name.replace("reasoning_", "reasoning_lr_")).with_suffix(".json")
    if chosen_file.exists() and not args.quick:  # the --select-lr result, unless a rate was given
        chosen = {m: v["chosen"] for m, v in json.loads(chosen_file.read_text())["selection"].items()}
        lrs = {m: chosen[m] if lrs[m] == DEFAULT_LR[m] else lrs[m] for m in lrs}
        print(f"learning rates {lrs} (chosen in {chosen_file.name} unless given on the command line)")
    rows = [run(m, r, t, lrs[m], s) | {"seed": s} for m, r, t in configs for s in args.seeds]
    summary = []
    for m, rank, t in configs:
        rs = [r for r in rows if (r["method"], r["rank"], r["target_set"]) == (m, rank, t)]
        # LoRA rank 8 on the same targets; with --only and no such run, the ratios are nan
        base = [r for r in rows if (r["method"], r["rank"], r["target_set"]) == ("lora", 8, t)] or [
            {"trainable_params": float("nan"), "median_step_seconds": float("nan"), "train_memory_mb": float("nan")}
        ]
        ems = [r["exact_match"] for r in rs]
        summary.append(
            {
                "method": "MoRe" if m == "more" else "LoRA",
                "rank": rank,
                "targets": t,
                "lr": lrs[m],
                "trainable_params": rs[0]["trainable_params"],
                "params_vs_lora8": rs[0]["trainable_params"] / base[0]["trainable_params"],
                "em_mean": statistics.mean(ems),
                "em_std": statistics.stdev(ems) if len(ems) > 1 else 0.0,
                "em_min": min(ems),
                "em_max": max(ems),
                "step_ratio_vs_lora8": statistics.median(r["median_step_seconds"] for r in rs)
                / statistics.median(r["median_step_seconds"] for r in base),
                "memory_ratio_vs_lora8": statistics.median(r["train_memory_mb"] for r in rs)
                / statistics.median(r["train_memory_mb"] for r in base),
                "step_seconds": statistics.median(r["median_step_seconds"] for r in rs),
            }
        )
    lines = [
        "| method | rank | targets | trainable params | x LoRA-r8 params | exact match mean ± std (min-max) |"
        " step time x LoRA-r8 | train memory x LoRA-r8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['rank']} | {s['targets']} | {s['trainable_params']:,d} | "
            f"{s['params_vs_lora8']:.2f} | {s['em_mean']:.3f} ± {s['em_std']:.3f} ({s['em_min']:.3f}-{s['em_max']:.3f})"
            f" | {s['step_ratio_vs_lora8']:.2f} | {s['memory_ratio_vs_lora8']:.2f} |"
        )
    table = "\n".join(lines)
    seconds = time.time() - t_start
    print(f"\n{table}\n\nbase model exact match {before:.3f}; learning rates {lrs}; total {seconds:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"env": env, "args": vars(args), "lr": lrs, "exact_match_before": before, "runs": rows}
    meta |= {"summary": summary, "seconds": seconds, "license": LICENSE}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    baseline = "LoRA rank 8 on the same targets (columns 'x LoRA-r8')"
    out.with_suffix(".md").write_text(
        f"{header(command_line(), baseline)}Device: {args.device}  \n"
        f"BIG-bench {args.task}: {train_size} training examples x {epochs} epoch(s), "
        f"{len(test)} test examples, seeds {args.seeds}, batch {args.batch_size}; base model exact match "
        f"{before:.3f}; learning rates {lrs}; {seconds:.0f} s\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
