"""Restore a DACON test set with a trained model into a checked submission.zip, logged to MLflow.

    python pipelines/predict.py --model models:/imgrestore-demo@champion --data DIR --out submission.zip
    python pipelines/predict.py --model runs/demo-.../checkpoint_000005 --data DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from imgrestore.data.dacon import DatasetError, load_dataset
from imgrestore.data.embedded import embedded_dataset
from imgrestore.submission.predict import SubmissionError, write_submission
from imgrestore.tracking import get_or_create_experiment, setup_tracking
from imgrestore.tracking.champion import load_restorer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder, or models:/NAME@champion")
    p.add_argument("--data", help="DACON dataset folder (default: the embedded dataset)")
    p.add_argument("--out", default="submission.zip")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="predict", help="MLflow experiment the prediction run is logged to")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    tracking_uri = setup_tracking(args.tracking_uri)
    try:
        dataset = load_dataset(Path(args.data) if args.data else embedded_dataset())
        model = load_restorer(args.model, tracking_uri, args.device)
        zip_path = write_submission(model, dataset.test, args.out, device=args.device)
    except (DatasetError, SubmissionError, FileNotFoundError, mlflow.exceptions.MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with mlflow.start_run(experiment_id=get_or_create_experiment(args.experiment, tracking_uri),
                          run_name=f"predict {Path(zip_path).name}"):
        mlflow.log_params({"model": args.model, "data": str(dataset.root), "n_test": len(dataset.test)})
        mlflow.log_artifact(str(zip_path))
    print(f"{'model':<12} {args.model}\n{'test images':<12} {len(dataset.test)}\n{'submission':<12} {Path(zip_path).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
