"""The training DataLoader: CPU cost per image, and its worker processes' resident memory over whole epochs.

    python benchmarks/loader.py                            # 512 px; 4 workers, 2 epochs of 200 pairs
    python benchmarks/loader.py --write-docs docs/benchmarks.md

Cost: what one worker spends per image, stage by stage (decode + damage + tensors; collation + the Telea
prefill), with the items as the training loop makes them (uint8, converted on the device) and as float tensors
(what it made before), measured in this process on one thread, best of `--repeats` passes over the same
images. From it, the workers a trial needs to feed a GPU step of a given speed.

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

from imgrestore.benchmarking.report import _children_map, _pss_mb, rss_mb, write_sections  # noqa: E402
from imgrestore.data.build import BuildConfig, build_dataset  # noqa: E402
from imgrestore.data.embedded import bundled_photos  # noqa: E402
from imgrestore.benchmarking.gpu_dacon import train_frame_of  # noqa: E402
from imgrestore.models import create_model  # noqa: E402
from imgrestore.models.prefill import PrefillCollate  # noqa: E402
from imgrestore.training.data import RestorationDataset, batch_to_device  # noqa: E402
from imgrestore.training.loop import train_loader, with_defaults  # noqa: E402


SECTION = "## DataLoader worker memory"
COST_SECTION = "## DataLoader CPU cost per image"


def measure_cost(frame, size: int, batch: int, n_images: int, repeats: int) -> list[dict]:
    """ms per image of each stage, one thread, uint8 items (the training loop's) and float items."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs torch on one thread
    collate = PrefillCollate("telea", 5)
    rows = []
    try:
        for uint8 in (True, False):
            ds = RestorationDataset(frame, size, train=True, extra_damage=0.7, flip=True, seed=0, uint8=uint8)
            best = {"item": float("inf"), "collate": float("inf"), "to_float": float("inf")}
            n = min(n_images, len(ds)) // batch * batch
            for _ in range(repeats):
                spent = dict.fromkeys(best, 0.0)
                for b in range(0, n, batch):
                    t0 = time.perf_counter()
                    items = [ds[i] for i in range(b, b + batch)]
                    t1 = time.perf_counter()
                    out = collate(items)
                    t2 = time.perf_counter()
                    batch_to_device(out, "cpu")  # on a GPU this runs there, after a copy of these bytes
                    t3 = time.perf_counter()
                    spent["item"] += t1 - t0
                    spent["collate"] += t2 - t1
                    spent["to_float"] += t3 - t2
                best = {k: min(best[k], 1000 * v / n) for k, v in spent.items()}
            nbytes = sum(t.numel() * t.element_size() for t in out) / batch
            rows.append({"items": "uint8 (training loop)" if uint8 else "float32", **best,
                         "worker_ms": best["item"] + best["collate"], "kb_per_image": nbytes / 1024})
    finally:
        torch.set_num_threads(threads)
    return rows


def cost_section(rows: list[dict], args, n: int) -> str:
    cmd = "python benchmarks/loader.py " + " ".join(sys.argv[1:])
    ref = rows[0]["worker_ms"]
    lines = [COST_SECTION, "",
             f"`{cmd.strip()}` on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}: {n} synthetic {args.size} px "
             f"pairs as the training loader makes them (RestorationDataset(train=True, extra_damage 0.7, flips), "
             f"PrefillCollate with the Telea prefill), in this process on one thread (a worker's), batch "
             f"{args.batch}, best of {args.repeats} passes; ms per image.", "",
             "| items | decode + damage + tensors | collate + Telea prefill | a worker's total | to float (on the "
             "device in training) | bytes per image to the device | workers for 100 images/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['items']} | {r['item']:.1f} | {r['collate']:.1f} | {r['worker_ms']:.1f} | {r['to_float']:.1f} | "
              f"{r['kb_per_image']:.0f} KB | {100 * r['worker_ms'] / 1000:.1f} |" for r in rows]
    lines += ["", f"Workers for 100 images/s: 100 x a worker's ms per image / 1000, on otherwise idle cores (what an "
              f"H200 step of the lightest dacon.yaml families, 77-80 ms per batch of 8, asks for); a trial's "
              f"`num_workers: auto` is its `cpu` minus one. The uint8 row is {ref:.1f} ms."]
    return "\n".join(lines) + "\n"


def measure(root: Path, size: int, workers: int, batch: int, epochs: int, uint8: bool = True) -> list[dict]:
    frame = train_frame_of(root)
    cfg = with_defaults({"num_workers": workers, "batch_size": batch, "extra_damage": 0.7, "image_size": size})
    dataset = RestorationDataset(frame, size, train=True, extra_damage=0.7, flip=True, seed=0, uint8=uint8)
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
        rows.append({"items": "uint8 (training loop)" if uint8 else "float32", "epoch": epoch, "images_per_s": len(loader) * batch / (time.perf_counter() - t),
                     "worker_rss": max(worker_rss), "worker_pss": max(worker_pss),
                     "worker_pss_first": worker_pss[0], "main_pss": max(main_pss)})
    return rows


def section(rows: list[dict], args, build_s: float) -> str:
    cmd = "python benchmarks/loader.py " + " ".join(sys.argv[1:])
    lines = [SECTION, "",
             f"`{cmd.strip()}` on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}: loop.train_loader over "
             f"{args.train} synthetic {args.size} px pairs (built in {build_s:.0f} s), num_workers {args.workers}, "
             f"batch {args.batch}, extra_damage 0.7, the Telea prefill in the workers; per epoch the largest "
             "worker's RSS and PSS (sampled at every batch) and the main process's PSS.", "",
             "| items | epoch | images/s | worker RSS (max) | worker PSS (first sample) | worker PSS (max) | main PSS "
             "(max) |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['items']} | {r['epoch']} | {r['images_per_s']:.1f} | {r['worker_rss']:.0f} MB | {r['worker_pss_first']:.0f} MB | "
              f"{r['worker_pss']:.0f} MB | {r['main_pss']:.0f} MB |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--train", type=int, default=200, help="synthetic training pairs")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for the memory part")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cost-images", type=int, default=96, help="images timed for the cost part")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write-docs", metavar="PATH", help="write the sections into this markdown file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgrestore-loader-") as tmp:
        t = time.perf_counter()
        root = build_dataset(bundled_photos(), Path(tmp) / "set", BuildConfig(size=args.size, n_train=args.train,
                                                                             n_test=4, seed=0), progress=False)
        build_s = time.perf_counter() - t
        memory = section([r for uint8 in (True, False)
                          for r in measure(root, args.size, args.workers, args.batch, args.epochs, uint8)], args, build_s)
        print(memory, flush=True)  # first: the cost part leaves decoded images and thread pools in this process
        cost = cost_section(measure_cost(train_frame_of(root), args.size, args.batch, args.cost_images, args.repeats),
                            args, min(args.cost_images, args.train) // args.batch * args.batch)
        print(cost)
    if args.write_docs:
        write_sections(args.write_docs, {SECTION: memory, COST_SECTION: cost})
        print(f"wrote the sections into {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
