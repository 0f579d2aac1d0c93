"""The demo's champion on the benchmark's held-out photos, beside the benchmark's restorers on the same images.

    make demo                                  # registers models:/imgrestore-demo@champion in ./mlflow.db
    python pipelines/benchmark.py              # its result: ~/.cache/imgrestore/benchmark/last_result.pkl
    python benchmarks/demo_on_benchmark.py [--demo-store sqlite:///mlflow.db] [--bench-work DIR] [--write-docs F]

The demo trains on crops of the bundled photos at 128 px; the benchmark tests on 256 px crops of photos of
../shared/photos that its own search never saw, some of which are bundled photos too. So only the held-out images
whose photo the demo never trained on are scored: two photos are one when their 16x16 gray thumbnails differ by
less than a mean of 6 gray levels (names differ between the two folders; the matches are printed). On those
images: the demo's registered champion, restoring as the submission does (masks detected, its own hue prior),
and the benchmark's rows (its champion, the classical restorers, ...) from the benchmark's saved per-image
scores of the same images; differences are per image, mean ± standard error.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imgrestore.benchmarking.report import publish

SECTION = "## The demo's champion on the benchmark's held-out photos"
SAME_PHOTO = 6.0  # mean absolute difference of 16x16 gray thumbnails (0-255) below which two photos are one
DEMO = "demo champion (make demo)"


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16), Image.BOX), dtype=np.float64)


def demo_photos_in_test(bench_photos: str, bench_data: Path, demo_data: Path) -> dict[str, str]:
    """{benchmark test photo: the demo training photo it is}, by thumbnail."""
    from imgrestore.data.build import photos_in
    from imgrestore.data.embedded import bundled_photos

    demo_src = pd.read_csv(demo_data / "sources.csv")
    demo_train = set(demo_src.loc[demo_src["split"] == "train", "photo"])
    demo = {name: thumbnail(load()) for name, load in bundled_photos() if name in demo_train}
    if len(demo) != len(demo_train):
        raise SystemExit(f"error: {sorted(demo_train - set(demo))[:3]}...: demo training photos that are not "
                         "bundled photos (a demo dataset built by another version?)")
    bench_src = pd.read_csv(bench_data / "sources.csv")
    test_photos = set(bench_src.loc[bench_src["split"] == "test", "photo"])
    found = {}
    for name, load in photos_in(bench_photos):
        if name in test_photos:
            t = thumbnail(load())
            diffs = {d: float(np.abs(t - dt).mean()) for d, dt in demo.items()}
            closest = min(diffs, key=diffs.get)
            if diffs[closest] < SAME_PHOTO:
                found[name] = closest
    return found


def measure(args) -> dict:
    from imgrestore.benchmarking import quality
    from imgrestore.benchmarking.runner import RESULT_VERSION
    from imgrestore.data.embedded import cache_root, embedded_dataset
    from imgrestore.tracking.champion import load_restorer

    work = Path(args.bench_work) if args.bench_work else cache_root() / "benchmark"
    res = pickle.loads((work / "last_result.pkl").read_bytes())
    if getattr(res, "version", 1) != RESULT_VERSION:
        raise SystemExit(f"error: {work / 'last_result.pkl'}: saved by another version of the benchmark")
    bench_data = next((work / "datasets").glob(f"bench-*-{res.cfg.size}px-{res.cfg.n_train}x{res.cfg.n_test}-s*"))
    demo_data = Path(args.demo_data) if args.demo_data else embedded_dataset()
    same = demo_photos_in_test(res.cfg.photos, bench_data, demo_data)
    src = pd.read_csv(bench_data / "sources.csv")
    seen = set(src.loc[(src["split"] == "test") & src["photo"].isin(same), "img_id"] + ".png")
    test = [im for im in quality.load_test_set(bench_data, bench_data / "test_preproc_1.csv") if im.name not in seen]
    demo = load_restorer(args.model, args.demo_store)
    frames = {DEMO: quality.score_method(test, quality.model_predictor(demo))}
    names = [im.name for im in test]
    for label, row in res.quality.items():
        frames[label] = row["frame"].set_index("name").loc[names].reset_index()
    return {"frames": frames, "same": same, "n_test": len(src[src["split"] == "test"]),
            "test_photos": int(src.loc[src["split"] == "test", "photo"].nunique()), "bench_date": res.machine.get("date"),
            "demo_config": getattr(demo, "config", {}), "demo_name": getattr(demo, "name", "?"), "model": args.model}


def section(m: dict, argv: list[str]) -> str:
    from imgrestore.tuning.baselines import PairedAdvantage

    frames, ref = m["frames"], m["frames"][DEMO]
    n = len(ref)
    lines = [SECTION, "",
             f"- command: `python benchmarks/demo_on_benchmark.py {' '.join(argv)}`",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the benchmark's result of "
             f"{m['bench_date'] or '?'}; the demo's champion `{m['model']}` ({m['demo_name']}, "
             f"prefill {m['demo_config'].get('prefill', '?')}, chroma {m['demo_config'].get('chroma', '?')})",
             f"- images: {n} of the benchmark's {m['n_test']} held-out images; left out: those of "
             f"{len(m['same'])} of its {m['test_photos']} test photos that the demo trained on ("
             + ", ".join(f"{b} = {d}" for b, d in sorted(m["same"].items())) + ")", "",
             "| method | images | S | M | C | score | demo champion − method (mean ± s.e.) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for label, f in frames.items():
        mean = f[["ssim", "masked_ssim", "hist_sim", "score"]].mean()
        diff = "-" if f is ref else PairedAdvantage.of(ref["score"].to_numpy(), f["score"].to_numpy()).text()
        lines.append(f"| {label} | {len(f)} | {mean['ssim']:.3f} | {mean['masked_ssim']:.3f} | "
                     f"{mean['hist_sim']:.3f} | {mean['score']:.4f} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-store", default="sqlite:///mlflow.db", help="make demo's MLflow store")
    ap.add_argument("--model", default="models:/imgrestore-demo@champion", help="the demo's registered champion")
    ap.add_argument("--demo-data", help="the demo's dataset (default: the embedded dataset in the cache)")
    ap.add_argument("--bench-work", help="the benchmark's --work (default: ~/.cache/imgrestore/benchmark)")
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    text = section(measure(args), sys.argv[1:] if argv is None else list(argv))
    publish({SECTION: text}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
