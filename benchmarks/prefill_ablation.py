"""Does filling the hole before the network (push-pull, `prefill=True`) help? Same data, budget, seed.

    python benchmarks/prefill_ablation.py [--epochs 6] [--data DIR]

Trains each model family with and without the prefill on the embedded dataset's cluster-aware
validation fold (train at 128 px) and prints the validation competition score of the last and best epoch.
"""
from __future__ import annotations

import argparse
import platform as stdlib_platform
import time

import torch

from imgrestore.data.embedded import embedded_dataset
from imgrestore.preprocess import run_preprocess
from imgrestore.training.loop import train


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="DACON dataset (default: the embedded dataset)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--models", default="ycbcr_unet,two_stage_unet")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data = args.data or str(embedded_dataset())
    run_preprocess(data, log_mlflow=False)
    print(f"machine: {stdlib_platform.machine()}, {torch.get_num_threads()} threads; date {time.strftime('%Y-%m-%d')}")
    print(f"data: {data}; {args.epochs} epochs, base_channels 16, depth 3, loss l1 + 0.2 ssim, lr 2e-3, seed 0\n")
    print("| model | prefill | score (last) | ssim | masked_ssim | hist_sim | best score | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        for prefill in (False, True):
            rows, t0 = [], time.perf_counter()
            train({"data_dir": data, "model": {"name": name, "base_channels": 16, "depth": 3, "prefill": prefill},
                   "loss": {"l1": 1.0, "ssim": 0.2}, "epochs": args.epochs, "lr": 2e-3}, lambda m, d: rows.append(m))
            last = rows[-1]
            print(f"| {name} | {prefill} | {last['score']:.3f} | {last['ssim']:.3f} | {last['masked_ssim']:.3f} | "
                  f"{last['hist_sim']:.3f} | {max(r['score'] for r in rows):.3f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
