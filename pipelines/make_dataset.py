"""Turn a folder of colour photos into a DACON-format dataset (plus a hidden test_gt/ for scoring).

    python pipelines/make_dataset.py --photos ../shared/photos --out data/photos256 --size 256 --train 400 --test 100

Bad input: `error: <message>` on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from imgrestore.data.build import BuildConfig, build_dataset, photos_in
from imgrestore.data.dacon import load_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True, help="folder of colour photos")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--size", type=int, default=256, help="images are size x size")
    p.add_argument("--train", type=int, default=64, help="number of train pairs")
    p.add_argument("--test", type=int, default=16, help="number of test inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a dataset an earlier make_dataset built (never any other folder)")
    args = p.parse_args(argv)
    cfg = BuildConfig(size=args.size, n_train=args.train, n_test=args.test, seed=args.seed)
    try:
        out = build_dataset(photos_in(args.photos), args.out, cfg, overwrite=args.overwrite,
                            photo_dirs=[args.photos])
        ds = load_dataset(out)  # validates what was written
    except (OSError, ValueError) as e:  # missing or unwritable folders, bad photos, DatasetError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {len(ds.train)} train pairs, {len(ds.test)} test inputs, {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
