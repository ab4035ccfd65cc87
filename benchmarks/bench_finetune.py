"""MoRe vs PEFT LoRA fine-tuning all-MiniLM-L6-v2 on Rotten Tomatoes (offline, CPU-sized).

    python benchmarks/bench_finetune.py                # learning-rate selection + 3 seeds x 5 configs
    python benchmarks/bench_finetune.py --quick        # tiny sizes, for a smoke test

Protocol (same for both methods, nothing tuned for one only):
1. learning rate per method family (MoRe, LoRA) chosen from the same grid on a validation
   split held out from the *training* movies (seed 0, one run each);
2. MoRe (nblocks 4, block rank 1, 2, 4) and LoRA (rank 8, 16; alpha = 2*rank) on query+value
   of all 6 layers, classifier head trained in both, same steps, same seeds, same batches;
   accuracy on the test movies (disjoint from training movies), mean and spread over seeds,
   trainable parameters, step-time ratio and training-memory ratio MoRe / LoRA-r8 measured
   in this run.
Results: benchmarks/results/bench_finetune.json and .md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, header  # noqa: E402

from structmat.experiments.classify import FinetuneConfig, run_classification  # noqa: E402
from structmat.experiments.data import (
    TextDataset,  # noqa: E402
    load_rotten_tomatoes,  # noqa: E402
)

CONFIGS = [("more", 1), ("more", 2), ("more", 4), ("lora", 8), ("lora", 16)]


def validation_split(train: TextDataset, n_val: int) -> tuple[TextDataset, TextDataset]:
    """Last ``n_val`` training reviews as validation (train is already shuffled)."""
    cut = len(train) - n_val
    return (
        TextDataset(train.texts[:cut], train.labels[:cut], train.label_names),
        TextDataset(train.texts[cut:], train.labels[cut:], train.label_names),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--train-size", type=int, default=2500)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=600)
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_finetune"))
    args = ap.parse_args()
    if args.quick:
        args.train_size, args.test_size, args.val_size, args.seeds, args.lr_grid = 64, 64, 64, [0], [1e-3]
    torch.set_num_threads(torch.get_num_threads())
    t_start = time.time()
    print(environment())
    train, test = load_rotten_tomatoes(seed=0)
    fit_set, val_set = validation_split(train, args.val_size)
    print(
        f"Rotten Tomatoes: {len(train)} train reviews, {len(test)} test reviews (disjoint movies); using "
        f"{args.train_size} train, {args.test_size} test, {args.val_size} validation"
    )

    def run(method: str, rank: int, lr: float, seed: int, data) -> dict:
        cfg = FinetuneConfig(
            method=method,
            rank=rank,
            lr=lr,
            seed=seed,
            train_size=args.train_size,
            test_size=args.test_size,
            progress=False,
        )
        r = run_classification(cfg, data)
        print(
            f"  {method:4s} rank={rank:<2d} lr={lr:.0e} seed={seed}: acc {r['accuracy']:.4f}  "
            f"step {r['median_step_seconds']:.3f}s  [{time.time() - t_start:.0f}s]",
            flush=True,
        )
        return r

    print("\n1. learning rate per method, on the validation split (seed 0):")
    chosen, selection = {}, []
    for method, rank in (("more", 2), ("lora", 8)):
        scores = {lr: run(method, rank, lr, 0, (fit_set, val_set))["accuracy"] for lr in args.lr_grid}
        chosen[method] = max(scores, key=scores.get)
        selection.append({"method": method, "rank": rank, "val_accuracy_by_lr": scores, "chosen_lr": chosen[method]})
    print(f"   chosen: {chosen}")

    print("\n2. test accuracy, seeds", args.seeds)
    rows = [run(m, r, chosen[m], s, (train, test)) | {"seed": s} for m, r in CONFIGS for s in args.seeds]
    summary = []
    base = [r for r in rows if r["method"] == "lora" and r["rank"] == 8]
    base_step = statistics.median(r["median_step_seconds"] for r in base)
    base_mem = statistics.median(r["train_memory_mb"] for r in base)
    base_params = base[0]["adapter_params"]
    for m, rank in CONFIGS:
        rs = [r for r in rows if r["method"] == m and r["rank"] == rank]
        accs = [r["accuracy"] for r in rs]
        summary.append(
            {
                "method": "MoRe" if m == "more" else "LoRA",
                "rank": rank,
                "lr": chosen[m],
                "adapter_params": rs[0]["adapter_params"],
                "trainable_params": rs[0]["trainable_params"],
                "params_vs_lora8": rs[0]["adapter_params"] / base_params,
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "acc_min": min(accs),
                "acc_max": max(accs),
                "step_ratio_vs_lora8": statistics.median(r["median_step_seconds"] for r in rs) / base_step,
                "memory_ratio_vs_lora8": statistics.median(r["train_memory_mb"] for r in rs) / base_mem,
            }
        )
    lines = [
        "| method | rank | adapter params | x LoRA-r8 params | accuracy mean ± std (min-max) | step time x LoRA-r8 |"
        " train memory x LoRA-r8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['rank']} | {s['adapter_params']:,d} | {s['params_vs_lora8']:.3f} | "
            f"{s['acc_mean']:.4f} ± {s['acc_std']:.4f} ({s['acc_min']:.3f}-{s['acc_max']:.3f}) | "
            f"{s['step_ratio_vs_lora8']:.2f} | {s['memory_ratio_vs_lora8']:.3f} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\nlearning rates chosen on validation: {chosen}; total {time.time() - t_start:.0f} s")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "env": environment(),
        "args": vars(args),
        "lr_selection": selection,
        "chosen_lr": chosen,
        "runs": rows,
        "summary": summary,
        "seconds": time.time() - t_start,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    baseline = "LoRA rank 8 on the same targets (columns 'x LoRA-r8')"
    out.with_suffix(".md").write_text(
        f"{header(command_line(), baseline)}Learning rates chosen on validation: {chosen}\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
