"""The main job: preprocess -> Ray Tune search (tracked in MLflow) -> champion model -> submission.zip.

    python pipelines/tune.py                                   # embedded default: bundled photos, CPU space
    python pipelines/tune.py --data DIR --space search_spaces/dacon.yaml
    python pipelines/tune.py --resume latest                   # continue the last interrupted search
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from imgrestore.data.dacon import load_dataset
from imgrestore.data.embedded import embedded_dataset
from imgrestore.preprocess import run_preprocess
from imgrestore.submission.predict import write_submission
from imgrestore.tracking import setup_tracking
from imgrestore.tracking.champion import load_restorer, log_champion
from imgrestore.tuning.search import best_checkpoint, latest_experiment, run_search
from imgrestore.tuning.space import load_space
from imgrestore.tuning.summary import SCORE_KEYS, summary_text, trials_table

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="DACON dataset folder (default: the embedded dataset of bundled photos)")
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "demo.yaml"), help="search space YAML")
    p.add_argument("--storage", default="runs", help="Tune storage path (local folder, or s3://... on a cluster)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--resume", help="experiment folder to resume, or 'latest'")
    p.add_argument("--out", default="submission.zip", help="where to write the submission zip")
    p.add_argument("--model-name", help="registered model name (default: imgrestore-<space name>)")
    p.add_argument("--embedder", default=None, help="preprocess embedder (default: clip:geolocal/StreetCLIP "
                   "for --data, effnet-lite0 for the embedded dataset)")
    p.add_argument("--preprocess-out", help="where preprocess writes its CSVs (default: the data folder)")
    p.add_argument("--ray-address", help="connect to a running Ray cluster (default: start a local one)")
    p.add_argument("--num-samples", type=int, help="override the space's num_samples")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tracking_uri = setup_tracking(args.tracking_uri)
    space = load_space(args.space)
    if args.num_samples:
        space.num_samples = args.num_samples
    data_dir = Path(args.data) if args.data else embedded_dataset()
    dataset = load_dataset(data_dir)  # validates every file before any work starts
    ray.init(address=args.ray_address, ignore_reinit_error=True)

    # 1. preprocess: embeddings -> scene clusters -> leakage-free folds (skipped when up to date)
    embedder = args.embedder or ("effnet-lite0" if not args.data else "clip:geolocal/StreetCLIP")
    pre = run_preprocess(data_dir, args.preprocess_out, embedder=embedder, tracking_uri=tracking_uri)
    print(f"preprocess: {'up to date, reused' if pre.reused else 'done'} ({pre.embedder}, {pre.backend}): "
          f"{pre.summary.get('n_clusters')} clusters, noise {pre.summary.get('noise_share', 0):.0%}")
    space.config = {**space.config, "preproc_csv": pre.paths["train_csv"]}

    # 2. search
    resume = None
    if args.resume:
        resume = latest_experiment(args.storage, space.name) if args.resume == "latest" else args.resume
        if resume is None:
            print(f"error: no experiment of space '{space.name}' to resume under {args.storage}", file=sys.stderr)
            return 2
    outcome = run_search(space, data_dir, args.storage, tracking_uri, resume=resume, seed=args.seed,
                         artifacts=[space.source, pre.paths["cluster_map"], pre.paths["summary"]])
    print(trials_table(outcome.results, space.metric, space.mode))

    client = MlflowClient(tracking_uri)
    try:
        return finish(args, space, outcome, dataset, client, tracking_uri)
    except RuntimeError as e:  # no trial reported a score or left a checkpoint: the errors are above
        client.set_terminated(outcome.parent_run_id, "FAILED")
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BaseException:
        client.set_terminated(outcome.parent_run_id, "FAILED")
        raise


def finish(args, space, outcome, dataset, client, tracking_uri) -> int:
    # 3. champion: the best checkpoint of the best trial, registered with the alias `champion`
    best, checkpoint, best_epoch = best_checkpoint(outcome.results, space.metric, space.mode)
    with checkpoint.as_directory() as ckpt_dir:
        model_uri, version = log_champion(ckpt_dir, outcome.parent_run_id,
                                          args.model_name or f"imgrestore-{space.name}", tracking_uri)

    # 4. submission from the registered champion, checked, logged
    model = load_restorer(model_uri, tracking_uri)
    zip_path = write_submission(model, dataset.test, args.out)
    client.log_artifact(outcome.parent_run_id, str(zip_path))
    best_metrics = {f"best_{k}": float(best_epoch[k]) for k in SCORE_KEYS if k in best_epoch}
    for k, v in best_metrics.items():
        client.log_metric(outcome.parent_run_id, k, v)
    client.set_tag(outcome.parent_run_id, "best_trial_id", best_epoch.get("trial_id", ""))
    client.set_terminated(outcome.parent_run_id, "FINISHED")
    print(summary_text(best_epoch, best.config, zip_path.resolve(), model_uri, version, outcome.experiment_dir,
                       tracking_uri))
    print(json.dumps({"submission": str(zip_path.resolve()), "champion": model_uri, **best_metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
