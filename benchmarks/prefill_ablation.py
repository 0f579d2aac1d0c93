"""Does filling the hole before the network (push-pull, `prefill=True`) help? Same data, budget, seed.

    python benchmarks/prefill_ablation.py [--epochs 6] [--data DIR] [--write-docs docs/benchmarks.md]

Trains each model family with and without the prefill on the embedded dataset's cluster-aware
validation fold (train at 128 px) and prints the validation competition score of the last and best epoch.
"""
from __future__ import annotations

import argparse
import os
import platform as stdlib_platform
import time

import torch

from imgrestore.benchmarking.report import write_sections
from imgrestore.data.embedded import embedded_dataset
from imgrestore.preprocess import run_preprocess
from imgrestore.training.loop import train


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="DACON dataset (default: the embedded dataset)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--models", default="unet,two_stage_unet")
    p.add_argument("--write-docs", help="add/replace the '## Prefill ablation' section of this markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data = args.data or str(embedded_dataset())
    run_preprocess(data, log_mlflow=False)
    lines = ["## Prefill ablation\n",
             "Each model trained with and without `prefill` (push-pull fill of the hole before the network), same "
             "data, budget and seed; validation fold of the cluster-group split.\n",
             "- command: `python benchmarks/prefill_ablation.py --write-docs docs/benchmarks.md`",
             f"- machine: {stdlib_platform.machine()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; "
             f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- data: {data}; {args.epochs} epochs at 128 px, base_channels 16, depth 3, loss l1 + 0.2 ssim, lr 2e-3, "
             "seed 0\n",
             "| model | prefill | score (last epoch) | ssim | masked_ssim | hist_sim | best epoch score | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        for prefill in (False, True):
            rows, t0 = [], time.perf_counter()
            train({"data_dir": data, "model": {"name": name, "base_channels": 16, "depth": 3, "prefill": prefill},
                   "loss": {"l1": 1.0, "ssim": 0.2}, "epochs": args.epochs, "lr": 2e-3}, lambda m, d: rows.append(m))
            last = rows[-1]
            lines.append(f"| {name} | {prefill} | {last['score']:.3f} | {last['ssim']:.3f} | "
                         f"{last['masked_ssim']:.3f} | {last['hist_sim']:.3f} | {max(r['score'] for r in rows):.3f} | "
                         f"{time.perf_counter() - t0:.0f} |")
            print(lines[-1], flush=True)
    if args.write_docs:
        write_sections(args.write_docs, {"## Prefill ablation": "\n".join(lines) + "\n"})


if __name__ == "__main__":
    main()
