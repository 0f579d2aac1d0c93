"""UMAP's numba kernels: compiled in every new process as umap-learn ships them, compiled once with numba's disk
cache on (``imgrestore.clustering.scene_clusters.cpu_backend``, what SceneClusterer uses).

    python benchmarks/umap_compile.py [--points 400] [--dim 1280] [--write-docs docs/benchmarks.md]

Four new processes in turn, each timing its imports and one UMAP + HDBSCAN fit as SceneClusterer runs them
(n_neighbors 5, min_dist 0, 2-D, random_state 42; clustered random unit vectors, the embedder's dimension):
two that import umap-learn plainly, then two through ``cpu_backend``: the first of those compiles and writes the
cache, the second loads it. All four share one fresh, temporary ``NUMBA_CACHE_DIR``, so nothing compiled by an
earlier run counts; the first process's imports therefore include compiling the few kernels pynndescent itself
declares ``cache=True`` (once per cache folder, as on a fresh install). The maps are compared byte for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform as platform_module
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

SECTION = "## UMAP's numba kernels: compiled once, not in every process"


def child(how: str, points: int, dim: int) -> None:
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    if how == "cached":
        from imgrestore.clustering.scene_clusters import cpu_backend

        UMAP, HDBSCAN = cpu_backend()
    else:
        from hdbscan import HDBSCAN
        from umap import UMAP
    imported = time.perf_counter() - t
    from imgrestore.benchmarking.throughput import clustered_points

    X = clustered_points(points, dim)
    t = time.perf_counter()
    emb = UMAP(n_neighbors=5, min_dist=0.0, n_components=2, random_state=42).fit_transform(X)
    labels = HDBSCAN(min_cluster_size=5, prediction_data=True).fit(emb).labels_
    fit = time.perf_counter() - t
    print(json.dumps({"import_s": imported, "fit_s": fit, "clusters": int(labels.max()) + 1,
                      "map_sha1": hashlib.sha1(emb.astype("float32").tobytes()).hexdigest()}))


def measure(points: int, dim: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for how, label in [("plain", "umap-learn as shipped, 1st process"),
                           ("plain", "umap-learn as shipped, 2nd process"),
                           ("cached", "cpu_backend, 1st process (compiles, writes the cache)"),
                           ("cached", "cpu_backend, 2nd process (loads the cache)")]:
            t = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", how, "--points", str(points), "--dim", str(dim)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({**row, "label": label, "wall_s": time.perf_counter() - t})
            print(f"{label}: {row}", file=sys.stderr, flush=True)
    return rows


def section(rows: list[dict], args, argv: list[str]) -> str:
    same = len({r["map_sha1"] for r in rows}) == 1
    lines = [SECTION, "",
             f"- command: `{' '.join(['python benchmarks/umap_compile.py', *argv])}`",
             f"- machine: {platform_module.machine()}, {os.cpu_count()} CPUs; date "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- {args.points} clustered random unit vectors of {args.dim} dimensions; each row a new process, one "
             "fresh temporary NUMBA_CACHE_DIR for all four", "",
             "| process | imports s | UMAP + HDBSCAN fit s | process wall s | clusters | same map as the first |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['import_s']:.1f} | {r['fit_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['clusters']} | {'yes' if r['map_sha1'] == rows[0]['map_sha1'] else 'NO'} |")
    lines += ["", f"Every map the same byte for byte: {'yes' if same else 'NO'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--child", choices=["plain", "cached"], help=argparse.SUPPRESS)
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.points, args.dim)
        return 0
    from imgrestore.benchmarking.report import publish

    text = section(measure(args.points, args.dim), args, sys.argv[1:] if argv is None else argv)
    publish({SECTION: text}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
