"""Resident memory of the training DataLoader's worker processes, as training runs them, over whole epochs.

    python benchmarks/loader_memory.py                            # 512 px, 4 workers, 2 epochs of 200 pairs
    python benchmarks/loader_memory.py --write-docs docs/benchmarks.md

The training loader (imgrestore.training.loop.train_loader: RestorationDataset decoding on the fly, generated
damage, the Telea prefill computed in the workers) over a synthetic DACON-format set built from the bundled
photos. At every batch it reads, from /proc, each worker's RSS and PSS (shared pages split between the
processes that share them: the honest share of a forked worker) and the main process's. A dataset that cached
decoded pairs would grow epoch after epoch (1.31 MB a 512 px pair: ~37 GB for 30k pairs, per worker); the
figures per epoch say whether anything grows. CPU only: the workers never touch a GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))

import torch  # noqa: E402

from imgrestore.benchmarking.report import _children_map, _pss_mb, write_sections  # noqa: E402
from imgrestore.data.build import BuildConfig, build_dataset  # noqa: E402
from imgrestore.data.embedded import bundled_photos  # noqa: E402
from imgrestore.gpu_bench import _train_frame  # noqa: E402
from imgrestore.models import create_model  # noqa: E402
from imgrestore.training.data import RestorationDataset  # noqa: E402
from imgrestore.training.loop import train_loader, with_defaults  # noqa: E402


SECTION = "## DataLoader worker memory"


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def measure(size: int, n_train: int, workers: int, batch: int, epochs: int) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory(prefix="imgrestore-loader-mem-") as tmp:
        t = time.perf_counter()
        root = build_dataset(bundled_photos(), Path(tmp) / "set", BuildConfig(size=size, n_train=n_train, n_test=4,
                                                                             seed=0), progress=False)
        build_s = time.perf_counter() - t
        frame = _train_frame(root)
        cfg = with_defaults({"num_workers": workers, "batch_size": batch, "extra_damage": 0.7, "image_size": size})
        dataset = RestorationDataset(frame, size, train=True, extra_damage=0.7, flip=True, seed=0)
        model = create_model("unet", base_channels=8, depth=2)  # the loader reads its prefill (telea)
        loader = train_loader(dataset, cfg, model, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
        rows = []
        for epoch in range(1, epochs + 1):
            dataset.set_epoch(epoch)
            worker_rss, worker_pss, main_pss, t = [], [], [], time.perf_counter()
            for _batch in loader:  # /proc reads are cheap next to a batch
                kids = _children_map().get(os.getpid(), [])
                worker_rss.append(max((rss_mb(k) for k in kids), default=0.0))
                worker_pss.append(max((_pss_mb(k) for k in kids), default=0.0))
                main_pss.append(_pss_mb(os.getpid()))
            rows.append({"epoch": epoch, "images_per_s": len(loader) * batch / (time.perf_counter() - t),
                         "worker_rss": max(worker_rss), "worker_pss": max(worker_pss),
                         "worker_pss_first": worker_pss[0], "main_pss": max(main_pss)})
    return rows, build_s


def section(rows: list[dict], args, build_s: float) -> str:
    cmd = "python benchmarks/loader_memory.py " + " ".join(sys.argv[1:])
    lines = [SECTION, "",
             f"`{cmd.strip()}` on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}: loop.train_loader over "
             f"{args.train} synthetic {args.size} px pairs (built in {build_s:.0f} s), num_workers {args.workers}, "
             f"batch {args.batch}, extra_damage 0.7, the Telea prefill in the workers; per epoch the largest "
             "worker's RSS and PSS (sampled at every batch) and the main process's PSS.", "",
             "| epoch | images/s | worker RSS (max) | worker PSS (first sample) | worker PSS (max) | main PSS (max) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['epoch']} | {r['images_per_s']:.1f} | {r['worker_rss']:.0f} MB | {r['worker_pss_first']:.0f} MB | "
              f"{r['worker_pss']:.0f} MB | {r['main_pss']:.0f} MB |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--train", type=int, default=200, help="synthetic training pairs")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (dacon.yaml: 4)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--write-docs", metavar="PATH", help="write the section into this markdown file")
    args = p.parse_args(argv)
    rows, build_s = measure(args.size, args.train, args.workers, args.batch, args.epochs)
    text = section(rows, args, build_s)
    print(text)
    if args.write_docs:
        write_sections(args.write_docs, {SECTION: text})
        print(f"wrote the section into {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
