"""Restore damaged gray images with a trained model into a checked submission.zip, logged to MLflow.

    python pipelines/predict.py --model models:/imgrestore-demo@champion --data DIR --out submission.zip
    python pipelines/predict.py --model runs/demo-.../checkpoint_000005 --input FOLDER_OF_PNGS

--data reads only the test side of a DACON folder (test.csv, or test_input/ by name): the train side
may be absent or broken. --input takes any folder of damaged gray images. Every input is validated
before the model is loaded. Bad input: `error: <message>` on stderr, exit status 2.

A model decodes with the hue prior its checkpoint carries, if any (imgrestore.models.hue_prior: the image's hues
steered towards the training photos' mean hue histogram by faint chroma, each pixel's gray kept
exactly; a search with `hue_prior: true` keeps it for the champion when it scores higher on validation).
--hue-prior DACON_DIR: decode with a prior fitted on DACON_DIR's training truths instead (any restorer, classical
ones alike); --no-hue-prior: decode without one. Decoding costs ~1 s a 256 px image on a CPU core (~4 s at 512 px):
--workers N decodes on N cores (Ray tasks of a local Ray; the network stays in this process), the same PNGs.

An existing --out is replaced only if it is a submission zip imgrestore wrote (its comment names the run that
wrote it, and the replacement is announced); any other file there is an error unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import pandas as pd
import torch
from safetensors import SafetensorError

from imgrestore.data.dacon import load_dataset, load_input_folder, load_test_inputs
from imgrestore.data.embedded import embedded_dataset
from imgrestore.models.hue_prior import HuePrior
from imgrestore.tuning.decoding import fit_prior
from imgrestore.submission.predict import check_out, submission_comment, write_submission
from imgrestore.tracking import get_or_create_experiment, setup_tracking
from imgrestore.tracking.champion import load_restorer


def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {device}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here")
    return device


def load_model(ref: str, tracking_uri: str, device: str) -> torch.nn.Module:
    """load_restorer, with a broken checkpoint reported as a ValueError naming it (no traceback)."""
    try:
        return load_restorer(ref, tracking_uri, device)
    except (FileNotFoundError, mlflow.exceptions.MlflowException):
        raise  # their messages already name the checkpoint or model
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise ValueError(f"{ref}: cannot load the model ({type(e).__name__}: {e})") from None


def read_inputs(args) -> tuple[Path, pd.DataFrame]:
    """(the folder, its validated inputs: name, input_path) from --input or --data."""
    if args.input:
        return Path(args.input), load_input_folder(args.input)
    data = Path(args.data) if args.data else embedded_dataset()
    if data.is_dir() and not (data / "test.csv").is_file() and not (data / "test_input").is_dir():
        raise ValueError(f"{data}: not a DACON folder (no test.csv, no test_input/); "
                         "for a plain folder of images use --input")
    return data, load_test_inputs(data)


def fit_hue_prior(data: str | None) -> HuePrior | None:
    """The hue prior fitted on the training truths of the DACON folder `data` (validated first), or None."""
    if data is None:
        return None
    train = load_dataset(data, require_test=False).train
    if train.empty:
        raise ValueError(f"--hue-prior {data}: no training truths to fit the hue prior on")
    return fit_prior(train, limit=len(train), progress=True)  # every truth, as given


def describe_prior(model, data: str | None) -> str:
    """What the restorations are decoded with, for the log and the MLflow params."""
    prior = getattr(model, "hue_prior", None)
    if prior is None:
        return "none"
    return f"fitted on {data}" if data else f"the model's own ({prior.n_images or '?'} training truths)"


def write_in_workers(workers: int, model, test, out, **kw) -> Path:
    """write_submission, its hue-prior decoding in Ray tasks when `workers` > 1 and there is a prior to decode
    (a local Ray of `workers` CPUs, started and stopped here unless one is already up); in this process
    otherwise."""
    if workers == 1 or getattr(model, "hue_prior", None) is None:
        return write_submission(model, test, out, **kw)
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)  # not a cluster's
    try:
        return write_submission(model, test, out, parallel=True, **kw)
    finally:
        if started:
            ray.shutdown()


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns a ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder, or models:/NAME@champion")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", help="DACON dataset folder; only its test side is read "
                        "(default: the embedded dataset)")
    source.add_argument("--input", help="a plain folder of damaged gray images to restore")
    p.add_argument("--out", default="submission.zip")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is not a submission zip written by imgrestore")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="predict", help="MLflow experiment the prediction run is logged to")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=positive_int, default=1, help="CPUs that decode a hue prior, in Ray tasks of a local "
                   "Ray started for it (default 1: in this process, no Ray)")
    decode = p.add_mutually_exclusive_group()
    decode.add_argument("--hue-prior", metavar="DACON_DIR",
                        help="decode with the hue prior fitted on this DACON folder's training truths (see above)")
    decode.add_argument("--no-hue-prior", action="store_true", help="decode without the model's hue prior")
    args = p.parse_args(argv)

    try:
        out = Path(args.out)
        check_out(out, args.overwrite)
        device = check_device(args.device)
        source_dir, test = read_inputs(args)
        hue_prior = fit_hue_prior(args.hue_prior)
        tracking_uri = setup_tracking(args.tracking_uri)
        model = load_model(args.model, tracking_uri, device)
        if hue_prior is not None or args.no_hue_prior:
            model.hue_prior = hue_prior
        decoding = describe_prior(model, args.hue_prior)
        zip_path = write_in_workers(args.workers, model, test, out, device=device,
                                    comment=submission_comment(f"predict.py --model {args.model}"))
    except (ValueError, OSError, mlflow.exceptions.MlflowException) as e:  # DatasetError, SubmissionError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with mlflow.start_run(experiment_id=get_or_create_experiment(args.experiment, tracking_uri),
                              run_name=f"predict {zip_path.name}"):
            mlflow.log_params({"model": args.model, "data": str(source_dir), "n_test": len(test),
                               "hue_prior": decoding})
            mlflow.log_artifact(str(zip_path))
    except (OSError, mlflow.exceptions.MlflowException) as e:
        print(f"error: {zip_path} was written, but logging it to MLflow failed: {e}", file=sys.stderr)
        return 2
    print(f"{'model':<12} {args.model}\n{'hue prior':<12} {decoding}\n"
          f"{'test images':<12} {len(test)}\n{'submission':<12} {zip_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
