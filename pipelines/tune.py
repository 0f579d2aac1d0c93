"""The main job: preprocess -> Ray Tune search (tracked in MLflow) -> champion model -> submission.zip.

    python pipelines/tune.py                                   # embedded default: bundled photos, CPU space
    python pipelines/tune.py --data DIR --space search_spaces/dacon.yaml
    python pipelines/tune.py --resume latest                   # continue the last interrupted search

Every search also scores the classical restorers (input copy, OpenCV Telea / Navier-Stokes, FSR) on the
trials' validation images; the champion is the best trial only if it beats the best of them image by image
(its per-image advantage clear of the space's `learned_sem` standard errors), and the summary states the
margin. Bad input: `error: <message>` on stderr, exit status 2. Ctrl-C during the search: exit status 130,
nothing registered or written, and the command that resumes the search (after the search: 130, no zip
written, and what may already be registered).

An existing --out is replaced only if it is a submission zip imgrestore wrote (the replacement names the run
that wrote it); any other file there is an error before any work, unless --overwrite is given.
Without --ray-address (or RAY_ADDRESS) a local Ray is started, and its processes end with this one even when
it is killed (two of Ray's agent processes take up to a minute to notice).

The console shows the stages, progress bars, Tune's trial table and the summary; Ray's own log lines and the
trials' output are in Ray's log files (/tmp/ray/session_latest/logs), and on the console with --verbose.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import ray
import torch
from mlflow.tracking import MlflowClient

from imgrestore.data.dacon import load_dataset
from imgrestore.data.embedded import embedded_dataset
from imgrestore.data.io import ImageReadError
from imgrestore.embedding.embedders import DEFAULT_CLIP
from imgrestore.preprocess import check_embedder_weights, run_preprocess
from imgrestore.submission.predict import check_out, submission_comment, write_submission
from imgrestore.tracking import setup_tracking
from imgrestore.tracking.champion import load_restorer, log_champion, validation_fingerprint
from imgrestore.tracking.tune_callback import TRIAL_TAG
from imgrestore.tuning.baselines import label, validation_config
from imgrestore.tuning.polish import select_champion
from imgrestore.tuning.search import SearchInterrupted, latest_experiment, run_search
from imgrestore.tuning.space import check_space, load_space
from imgrestore.tuning.summary import SCORE_KEYS, champion_text, summary_text, trials_table

ROOT = Path(__file__).resolve().parent.parent


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="DACON dataset folder (default: the embedded dataset of bundled photos)")
    p.add_argument("--space", help="search space YAML (default: search_spaces/demo.yaml, the CPU demo at 128 px)")
    p.add_argument("--storage", default="runs", help="Tune storage path (local folder, or s3://... on a cluster)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--resume", help="experiment folder to resume, or 'latest'. Resuming unpickles the folder's "
                   "tuner.pkl (Ray Tune's format): resume only experiments you (or people you trust) wrote")
    p.add_argument("--out", default="submission.zip", help="where to write the submission zip")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is not a submission zip written by imgrestore")
    p.add_argument("--model-name", help="registered model name (default: imgrestore-<space name>)")
    p.add_argument("--embedder", default=None, help="preprocess embedder (default: clip:geolocal/StreetCLIP "
                   "for --data, effnet-lite0 for the embedded dataset)")
    p.add_argument("--preprocess-out", help="where preprocess writes its CSVs (default: the data folder)")
    p.add_argument("--cluster-backend", choices=("auto", "cuml", "cpu"), default="auto",
                   help="UMAP + HDBSCAN on RAPIDS cuML (a GPU node) or the CPU; auto: cuML where a GPU is")
    p.add_argument("--ray-address", help="connect to a running Ray cluster (default: start a local one)")
    p.add_argument("--num-samples", type=positive_int, help="override the space's num_samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="Ray's log lines and the trials' own output on the console "
                   "too (always in Ray's log files, /tmp/ray/session_latest/logs)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was registered or written", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ImageReadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    # Everything a trial would trip on is checked here, before Ray or preprocess start.
    if args.space is None:
        args.space = str(ROOT / "search_spaces" / "demo.yaml")
        if args.data:  # say it: demo.yaml trains and validates at 128 px whatever the data's size
            print("no --space given: using search_spaces/demo.yaml (CPU-sized; trains and validates at 128 px, "
                  "the submission restores at full size). For the DACON data on GPUs: --space "
                  "search_spaces/dacon.yaml (512 px); on a CPU: --space search_spaces/cpu.yaml (256 px)")
    space = load_space(args.space)
    if args.num_samples:
        space.num_samples = args.num_samples
    check_space(space)
    check_out(args.out, args.overwrite)
    resume = None
    if args.resume:
        resume = latest_experiment(args.storage, space.name) if args.resume == "latest" else args.resume
        if resume is None:
            raise FileNotFoundError(f"no experiment of space '{space.name}' to resume under {args.storage}")
    tracking_uri = setup_tracking(args.tracking_uri)
    data_dir = Path(args.data) if args.data else embedded_dataset()
    dataset = load_dataset(data_dir)  # validates (fully decodes) every file before any work starts
    embedder = args.embedder or ("effnet-lite0" if not args.data else f"clip:{DEFAULT_CLIP}")
    check_embedder_weights(embedder, data_dir, args.preprocess_out)
    start_ray(args.ray_address, args.verbose)

    # 1. preprocess: embeddings -> scene clusters -> leakage-free folds (skipped when up to date)
    print(f"[1/3] preprocess {data_dir} ({len(dataset.train)} train, {len(dataset.test)} test images)", flush=True)
    pre = run_preprocess(data_dir, args.preprocess_out, embedder=embedder, backend=args.cluster_backend,
                         tracking_uri=tracking_uri)
    print(f"preprocess: {'up to date, reused' if pre.reused else 'done'} ({pre.embedder}, {pre.backend}): "
          f"{pre.summary.get('n_clusters')} clusters, noise {pre.summary.get('noise_share', 0):.0%}; "
          f"validation fold 0: {(pre.summary.get('fold_sizes') or ['?'])[0]} images from "
          f"{(pre.summary.get('fold_clusters') or ['?'])[0]} clusters")
    space.config = {**space.config, "preproc_csv": pre.paths["train_csv"]}

    # 2. search (the classical restorers are scored first, on the same validation images)
    print(f"[2/3] search: {space.num_samples} trials of {Path(space.source).name}, the classical restorers first",
          flush=True)
    try:
        outcome = run_search(space, data_dir, args.storage, tracking_uri, resume=resume, seed=args.seed,
                             artifacts=[space.source, pre.paths["cluster_map"], pre.paths["summary"]])
    except SearchInterrupted as e:
        print(f"\ninterrupted: nothing was registered or written. Resume with:\n  python pipelines/tune.py "
              f"{' '.join(_resume_args(args, e.experiment_dir))}", file=sys.stderr)
        return 130
    print(trials_table(outcome.results, space.metric, space.mode))
    for result in outcome.results:  # ended by the training loop itself: said here, not buried in a log
        if (result.metrics or {}).get("out_of_memory"):
            print(f"warning: trial {result.metrics.get('trial_id')}: {result.metrics.get('error')}", file=sys.stderr)

    client = MlflowClient(tracking_uri)
    print("[3/3] champion and submission", flush=True)
    try:
        return finish(args, space, outcome, dataset, client, tracking_uri, pre.paths["train_csv"])
    except KeyboardInterrupt:  # after the search: the champion may be registered already, the zip is not written
        client.set_terminated(outcome.parent_run_id, "KILLED")
        print("\ninterrupted after the search, while choosing or registering the champion or writing the "
              f"submission: {args.out} was not written (only a complete, checked zip is); a model version may "
              "already be registered (see MLflow). The search itself is complete: rerun with --resume "
              f"{outcome.experiment_dir} to choose the champion and write the submission again", file=sys.stderr)
        return 130
    except BaseException:
        client.set_terminated(outcome.parent_run_id, "FAILED")
        raise


def start_ray(address: str | None, verbose: bool = False) -> None:
    """Connect to the Ray cluster at `address` (or RAY_ADDRESS, or one started with `ray start` on this machine);
    with none, start a local Ray. Ray ties that local Ray's processes to this one: on Linux they get a
    parent-death signal (prctl PR_SET_PDEATHSIG), elsewhere a reaper process ends them, so a SIGKILLed tune.py
    leaves nothing behind; only its dashboard and runtime-env agents linger, up to a minute, before they exit
    (tests/test_tune_cli.py checks it). Should any be left (`ps -ef | grep ray::`), `ray stop` ends them, but
    also every other Ray on this machine, another search's included."""
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR)
    quiet_console(verbose)  # after ray.init, which sets its loggers' levels again


def quiet_console(verbose: bool) -> None:
    """Without --verbose, Ray's and Ray Data's info and warning lines stay in Ray's log files: the token
    notice, "experiment state snapshotting" (Tune saves its state after every checkpoint because num_to_keep
    is set: see tuning.search; it is the price of a safe resume, not a fault), Ray Data's plan logs."""
    if verbose:
        return
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    for name in ("ray", "ray.data", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"


def _resume_args(args, experiment_dir) -> list[str]:
    out = ["--resume", str(experiment_dir), "--space", args.space]
    defaults = {"storage": "runs", "out": "submission.zip", "cluster_backend": "auto"}
    for flag in ("data", "storage", "tracking_uri", "out", "model_name", "embedder", "preprocess_out",
                 "cluster_backend", "ray_address"):
        value = getattr(args, flag)
        if value is not None and value != defaults.get(flag):
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out + (["--overwrite"] if args.overwrite else [])


def finish(args, space, outcome, dataset, client, tracking_uri, split_csv) -> int:
    # 3. champion: the best checkpoint of the best trial (its inference prefill chosen on validation), unless a
    #    classical restorer beats it on the same validation images
    val = validation_config(space.config)
    fingerprint = validation_fingerprint(Path(split_csv).read_text(), val["val_fold"], val["image_size"],
                                         val["max_val_images"])
    name = args.model_name or f"imgrestore-{space.name}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="imgrestore-champion-") as tmp:
        sel = select_champion(outcome, space, split_csv, tmp, dataset.root, device, parallel=ray.is_initialized())
        choice, best, best_epoch, polished, folds = sel.choice, sel.best, sel.best_epoch, sel.polished, sel.folds
        if sel.error:
            print(f"warning: {sel.error}", file=sys.stderr)
        if sel.folds_error:
            print(f"warning: the champion could not be scored on every fold ({sel.folds_error}); its forecast is "
                  "fold 0's", file=sys.stderr)
        if polished:
            print("inference prefill and decoding on validation: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in polished.scores.items())
                  + f" -> {label(polished.prefill, polished.decoding)}")
        if choice.kind == "trial":
            run_id = _trial_run(client, outcome, choice.name, TRIAL_TAG) or outcome.parent_run_id
            what = (f"{best.config['model']['name']} from trial {choice.name}, epoch {best_epoch.get('epoch')}, "
                    f"prefill {label(polished.prefill, polished.decoding)}; margin over the best classical restorer "
                    f"({choice.best_classical}): {choice.margin:+.4f}"
                    + (f", per image {choice.advantage.text()}" if choice.advantage else ""))
        else:
            run_id = outcome.parent_run_id
            what = (f"classical restorer {label(choice.name, choice.decoding)}: "
                    + ("no trial left a checkpoint" if polished is None else
                       f"no trial could {choice.rule()} on validation (best trial {polished.score:.4f}"
                       + (f", per image {choice.advantage.text()}" if choice.advantage else "") + ")"))
            if folds is not None:
                what += f"; on every fold: {folds.text()}"
        description = f"validation score {choice.score:.4f}; {what}"
        model_uri, version, alias = log_champion(sel.checkpoint, run_id, name, tracking_uri, choice.score, fingerprint,
                                                 description, tags={"search_run": outcome.parent_run_id,
                                                                    "kind": choice.kind, "source": choice.name},
                                                 learned_margin=choice.required_margin)

    # 4. submission from the registered champion, checked, logged
    model = load_restorer(model_uri, tracking_uri, device)
    zip_path = write_submission(model, dataset.test, args.out, device=device, parallel=ray.is_initialized(),
                                comment=submission_comment(f"tune.py, MLflow run {outcome.parent_run_id}"))
    client.log_artifact(outcome.parent_run_id, str(zip_path))
    best_metrics = {f"best_{k}": float(best_epoch[k]) for k in SCORE_KEYS if k in best_epoch}
    cv = {} if folds is None else {"champion_cv_score": folds.score, "champion_cv_sem": folds.sem}
    paired = {} if choice.advantage is None else {"trial_advantage": choice.advantage.mean,
                                                  "trial_advantage_sem": choice.advantage.sem}
    for k, v in {**best_metrics, "champion_val_score": choice.score, "champion_margin": choice.margin, **cv,
                 **paired}.items():
        client.log_metric(outcome.parent_run_id, k, v)
    if folds is not None:
        client.log_text(outcome.parent_run_id, folds.markdown(), "champion_folds.md")
    client.set_tag(outcome.parent_run_id, "best_trial_id", best_epoch.get("trial_id", ""))
    client.set_tag(outcome.parent_run_id, "champion", f"{choice.kind}: {choice.name} (version {version})")
    client.set_terminated(outcome.parent_run_id, "FINISHED")
    if best is not None:
        print(summary_text(best_epoch, best.config, outcome.experiment_dir, tracking_uri, outcome.experiment_id))
    print(champion_text(choice, outcome.baselines, model_uri, version, alias, zip_path.resolve(), folds))
    print(json.dumps({"submission": str(zip_path.resolve()), "champion": model_uri, "version": version,
                      "champion_kind": choice.kind, "champion_val_score": choice.score,
                      "margin_over_classical": choice.margin, "alias_moved": alias.moved, **cv, **paired,
                      **best_metrics}))
    return 0


def _trial_run(client, outcome, trial_id, tag) -> str | None:
    runs = client.search_runs([outcome.experiment_id], f"tags.{tag} = '{trial_id}' and "
                              f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    return runs[0].info.run_id if runs else None


if __name__ == "__main__":
    sys.exit(main())
