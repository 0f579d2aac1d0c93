"""Benchmark: restoration quality against the classical restorers on a held-out set, and the platform's throughput.

    python pipelines/benchmark.py                      # the recorded run (see docs/benchmarks.md), ~2 h on 2 cores
    python pipelines/benchmark.py --quick              # everything at toy sizes, a few minutes
    python pipelines/benchmark.py --photos DIR --size 128 --train 240 --test 64 --space search_spaces/demo.yaml

Builds (once, cached under --work) a DACON-format dataset from the photos, with test_gt/ kept for scoring and
test photos disjoint from training photos; preprocesses it (effnet-lite0); runs the search of --space and picks
its champion as pipelines/tune.py does; trains the ablations of the best trial's config and the seed's recipe;
scores the classical restorers, the seed's recipe, the champion and the ablations on the held-out images;
measures throughput and memory; writes the "## Restoration quality" and "## Throughput and cost" sections of
--out-md (other sections are kept).
Bad input (missing photo folder or space file, nothing to rerender): `error: <message>` on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_PHOTOS = ROOT.parent / "shared" / "photos"


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns a ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def parse_args(argv=None):
    from imgrestore.benchmarking.runner import BenchConfig

    d = BenchConfig(photos="", work=Path())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(SHARED_PHOTOS) if SHARED_PHOTOS.is_dir() else "bundled",
                   help="folder of colour photos, or 'bundled' (default: ../shared/photos if present, else bundled)")
    p.add_argument("--out-md", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file to update")
    p.add_argument("--work", help="datasets, Tune runs, MLflow store, checkpoints (default: "
                   "$IMGRESTORE_CACHE/benchmark, or ~/.cache/imgrestore/benchmark; a quick run adds '-quick')")
    p.add_argument("--size", type=positive_int, help=f"image size (default {d.size})")
    p.add_argument("--train", type=positive_int, help=f"training images (default {d.n_train})")
    p.add_argument("--test", type=positive_int, help=f"held-out test images (default {d.n_test})")
    p.add_argument("--budget-epochs", type=positive_int, help="epochs of every trial, and so of the ablations and "
                   "the seed's recipe (default: the space's)")
    p.add_argument("--search-samples", type=positive_int, help="trials of the search (default: the space's)")
    p.add_argument("--seed-channels", type=positive_int, help=f"base channels of the seed's two-stage U-Net (default {d.seed_channels})")
    p.add_argument("--space", help=f"search space YAML (default {d.space.relative_to(ROOT)})")
    p.add_argument("--cluster-sizes", type=positive_int, nargs="+", help=f"UMAP/HDBSCAN sizes (default {' '.join(map(str, d.cluster_sizes))})")
    p.add_argument("--cluster-timeout", type=float, help=f"seconds for all clustering sizes (default {d.cluster_timeout:.0f})")
    p.add_argument("--quick", action="store_true", help="toy sizes (64 px, 30+6 images, 2 epochs, 2 trials, "
                   "model.net_size null)")
    p.add_argument("--no-write", action="store_true", help="print the sections only")
    p.add_argument("--rerender", action="store_true", help="measure nothing: render the last run's saved result "
                   "(--work/last_result.pkl) again, e.g. after changing the markdown layout")
    return p.parse_args(argv)


def check_inputs(args, saved: Path) -> None:
    """The ordinary input errors, found in seconds instead of minutes into the run."""
    from imgrestore.benchmarking.demo import DEMO_SPACE
    from imgrestore.data.build import photos_in
    from imgrestore.data.embedded import bundled_photos
    from imgrestore.tuning.space import load_space

    if args.rerender:
        if not saved.is_file():
            raise FileNotFoundError(f"{saved}: no saved result to rerender (run the benchmark first, same --work)")
        return
    if args.photos != "bundled":
        photos_in(args.photos)
    if args.space:
        load_space(args.space)
    load_space(DEMO_SPACE)  # the demo stage's, hours into the run
    bundled_photos()  # its training photos: those inside installed packages must be there


def main(argv=None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from imgrestore.benchmarking import render
    from imgrestore.benchmarking.report import write_sections
    from imgrestore.benchmarking.runner import BenchConfig, load_saved, run_benchmark
    from imgrestore.data.embedded import cache_root
    from imgrestore.data.io import atomic_path

    args = parse_args(argv)
    work = Path(args.work) if args.work else cache_root() / ("benchmark-quick" if args.quick else "benchmark")
    given = {"size": args.size, "n_train": args.train, "n_test": args.test, "budget_epochs": args.budget_epochs,
             "search_samples": args.search_samples,
             "seed_channels": args.seed_channels, "space": Path(args.space) if args.space else None,
             "cluster_sizes": tuple(args.cluster_sizes) if args.cluster_sizes else None,
             "cluster_timeout": args.cluster_timeout}
    given = {k: v for k, v in given.items() if v is not None}
    argv_shown = sys.argv[1:] if argv is None else list(argv)
    command = "python pipelines/benchmark.py" + "".join(" " + shlex.quote(a) for a in argv_shown)
    saved = work / "last_result.pkl"
    try:
        check_inputs(args, saved)
        res = load_saved(saved) if args.rerender else None
    except (OSError, ValueError) as e:  # checked before the long run starts, reported without a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.rerender:
        make = BenchConfig.quick_preset if args.quick else BenchConfig
        cfg = make(photos=args.photos, work=work, command=command, **given)
        res = run_benchmark(cfg)
        with atomic_path(saved) as tmp:  # a run killed mid-write keeps the previous result readable
            tmp.write_bytes(pickle.dumps(res))
    sections = {render.QUALITY: render.quality_section(res), render.THROUGHPUT: render.throughput_section(res)}
    for text in sections.values():
        print("\n" + text)
    if not args.no_write:
        write_sections(args.out_md, sections)
        print(f"wrote {', '.join(sections)} to {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
