"""Preprocess stage: embeddings (Ray Data) -> UMAP + HDBSCAN scene clusters -> leakage-free folds.

    run_preprocess(data_dir)  writes into out_dir (default: data_dir):
      train_preproc_1.csv   img_id, name, input_img_path, gt_img_path, cluster (-1 = noise), fold
      test_preproc_1.csv    img_id, name, input_img_path, cluster (predicted)
      preprocess/           embeddings_{train,test}.parquet, cluster_map.png, preprocess_summary.json,
                            preprocess_meta.json, embedding_cache/
    and logs an MLflow run (experiment "preprocess"): params, n_clusters / noise_share, the map, summary, CSVs.

Clustering runs as a Ray task (imgrestore.clustering.placement) that asks for a GPU when the cluster has or can
add one; `backend` ("auto", "cuml", "cpu": callers such as tune.py pass their --cluster-backend here) is resolved
on the node that runs that task. The backend used and where it ran are in the summary ("backend",
"cluster_placement"), the log and the MLflow run (params backend_used, cluster_num_gpus, cluster_host).

Folds keep every cluster on one side (imgrestore.clustering.split.group_folds); in a dataset built from photos
(imgrestore.data.build writes sources.csv: each crop's photo), every photo's crops too.

Train images are embedded from train_gt (as the original pipeline did), test images from test_input. Paths in
the CSVs are relative to out_dir ("./train_input/x.png") when the files lie under it, absolute otherwise.
`is_stale` compares preprocess_meta.json (parameters + a fingerprint of the dataset's files: names, sizes,
mtimes, and the CSVs' bytes) with the present, so callers rerun only when needed; a rerun embeds only files
whose content is not in the embedding cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from imgrestore.data.dacon import FOLDERS, IMAGE_SUFFIXES, load_dataset
from imgrestore.data.io import write_csv, write_text

log = logging.getLogger(__name__)
VERSION = 3  # 2: folds stratified over clusters (fold 0 no longer one cluster); fold_clusters in the summary
# 3: with sources.csv (a dataset built from photos), every source photo's crops on one side of the split too
SOURCES = "sources.csv"  # written by imgrestore.data.build: split, img_id, photo, ...
TRAIN_CSV, TEST_CSV = "train_preproc_1.csv", "test_preproc_1.csv"
SUBDIR, META, SUMMARY, MAP_PNG = "preprocess", "preprocess_meta.json", "preprocess_summary.json", "cluster_map.png"
DEFAULTS = dict(embedder="effnet-lite0", backend="auto", n_folds=5, seed=42, n_neighbors=5, min_dist=0.0,
                n_components=2, random_state=42, min_cluster_size=5, min_samples=None)


def preprocess_params(**overrides) -> dict:
    """The parameters that determine the outputs, defaults filled in, embedder spec made canonical."""
    from imgrestore.embedding.embedders import normalize_spec

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown preprocess parameter(s): {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **overrides}
    params["embedder"] = normalize_spec(params["embedder"])
    return params


def dataset_fingerprint(data_dir: str | os.PathLike) -> str:
    """sha256 over the image files' names, sizes and mtimes and over train.csv / test.csv / sources.csv bytes."""
    root = Path(data_dir)
    h = hashlib.sha256()
    for folder in FOLDERS:
        d = root / folder
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        for p in files:
            st = p.stat()
            h.update(f"{folder}/{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for csv in ("train.csv", "test.csv", SOURCES):
        if (root / csv).is_file():
            h.update(csv.encode() + hashlib.sha256((root / csv).read_bytes()).digest())
    return h.hexdigest()


def output_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    sub = out / SUBDIR
    return {"train_csv": out / TRAIN_CSV, "test_csv": out / TEST_CSV, "meta": sub / META,
            "summary": sub / SUMMARY, "cluster_map": sub / MAP_PNG,
            "train_embeddings": sub / "embeddings_train.parquet", "test_embeddings": sub / "embeddings_test.parquet",
            "cache_dir": sub / "embedding_cache"}


def stale_reason(data_dir, params: dict | None = None, out_dir=None) -> str | None:
    """Why the outputs are missing or stale, or None when they are up to date."""
    paths = output_paths(out_dir or data_dir)
    for key in ("train_csv", "test_csv", "meta"):
        if not paths[key].is_file():
            return f"{paths[key]} is missing"
    try:
        meta = json.loads(paths["meta"].read_text())
    except (OSError, ValueError) as e:
        return f"{paths['meta']} unreadable ({e})"
    if meta.get("version") != VERSION:
        return f"format version {meta.get('version')} != {VERSION}"
    if params:
        wanted = preprocess_params(**params)
        changed = {k: (meta.get("params", {}).get(k), wanted[k]) for k in params
                   if meta.get("params", {}).get(k) != wanted[k]}
        if changed:
            return "parameters changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
    if meta.get("fingerprint") != dataset_fingerprint(data_dir):
        return "the dataset's files changed"
    return None


def is_stale(data_dir, params: dict | None = None, out_dir=None) -> bool:
    """True if the outputs are missing, or were made from other files or (for the keys given) other params.

    `params=None` checks only the files; a dict checks the keys it names (e.g. {"n_folds": 5}).
    """
    return stale_reason(data_dir, params, out_dir) is not None


@dataclass
class PreprocessResult:
    train: pd.DataFrame
    test: pd.DataFrame
    summary: dict
    paths: dict = field(default_factory=dict)
    run_id: str | None = None
    reused: bool = False  # True when the outputs were up to date and nothing was recomputed

    @property
    def backend(self) -> str:
        return self.summary.get("backend", "")

    @property
    def embedder(self) -> str:
        return self.summary.get("embedder", "")


def _rel(path: str, root: Path) -> str:
    """`./train_input/x.png` relative to the dataset root, as DACON's CSVs (training resolves these against
    the data folder wherever the CSV is written); absolute if the file is outside the root."""
    p = Path(path).resolve()
    try:
        return "./" + p.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


def load_result(out_dir) -> PreprocessResult:
    paths = output_paths(out_dir)
    summary = json.loads(paths["summary"].read_text()) if paths["summary"].is_file() else {}
    meta = json.loads(paths["meta"].read_text())
    return PreprocessResult(pd.read_csv(paths["train_csv"]), pd.read_csv(paths["test_csv"]), summary,
                            {k: str(v) for k, v in paths.items()}, meta.get("run_id"), reused=True)


def check_embedder_weights(embedder: str, data_dir, preprocess_out=None) -> None:
    """Before any work (pipelines/tune.py: before Ray starts): `default_clip_loadable`, unless the preprocess
    outputs are up to date and nothing will be embedded."""
    if stale_reason(data_dir, preprocess_params(embedder=embedder), preprocess_out or data_dir) is not None:
        default_clip_loadable(embedder)


def default_clip_loadable(embedder: str) -> None:
    """Fail in seconds, not after a minute of hub retries, when `embedder` is the default CLIP model and its
    weights are neither in the Hugging Face cache nor downloadable (the hub is asked with a 3 s timeout;
    imgrestore.embedding.hub, which pipelines/doctor.py reports too). Any other embedder: nothing to check
    (effnet-lite0 needs no network; another CLIP model or folder is the user's explicit choice)."""
    from imgrestore.embedding.embedders import DEFAULT_CLIP, normalize_spec
    from imgrestore.embedding.hub import cached_weights, hub_reachable

    if normalize_spec(embedder) != f"clip:{DEFAULT_CLIP}":
        return
    cached, where = cached_weights(DEFAULT_CLIP)
    if cached:
        return
    ok, how = hub_reachable(DEFAULT_CLIP)
    if ok:
        return
    raise ValueError(f"the default embedder clip:{DEFAULT_CLIP} cannot be loaded: not in {where}, and the Hugging "
                     f"Face hub is NOT reachable ({how}). Use --embedder effnet-lite0 (offline: its weights come "
                     "with the project), or --embedder clip:/path/to/a/model/saved/with/save_pretrained")


def run_preprocess(data_dir, out_dir=None, embedder: str = "effnet-lite0", backend: str = "auto",
                   n_folds: int = 5, seed: int = 42, tracking_uri: str | None = None,
                   experiment: str = "preprocess", batch_size: int | None = None, num_actors: int | None = None,
                   cache_dir=None, force: bool = False, log_mlflow: bool = True, **cluster_params) -> PreprocessResult:
    """Embed, cluster, split and write the outputs (see the module doc). `cluster_params`: n_neighbors,
    min_dist, n_components, random_state, min_cluster_size, min_samples. Up-to-date outputs are reused
    (`reused=True`) unless `force`. `backend`: the clustering backend, see the module doc. `batch_size`: images
    per embedding batch (default: 16 on CPU actors, 128 on GPU actors)."""
    from imgrestore.clustering import cluster_summary, group_folds
    from imgrestore.clustering.placement import CLUSTER_PARAMS, run_clustering
    from imgrestore.clustering.plots import plot_cluster_map
    from imgrestore.clustering.split import describe_folds
    from imgrestore.embedding.cache import save_embeddings
    from imgrestore.embedding.ray_embed import embed_images

    data_dir = Path(data_dir)
    out = Path(out_dir or data_dir)
    params = preprocess_params(embedder=embedder, backend=backend, n_folds=n_folds, seed=seed, **cluster_params)
    paths = output_paths(out)
    reason = "forced" if force else stale_reason(data_dir, params, out)
    if reason is None:
        log.info("preprocess outputs in %s are up to date: reusing them", out)
        return load_result(out)
    log.info("preprocess %s -> %s (%s)", data_dir, out, reason)
    fingerprint = dataset_fingerprint(data_dir)
    ds = load_dataset(data_dir, require_test=False)
    sources = train_sources(data_dir, ds.train["name"])  # read before the expensive work: a bad file fails now
    default_clip_loadable(params["embedder"])  # the data first: a bad file is the error to report
    train_paths, test_paths = list(ds.train["gt_path"]), list(ds.test["input_path"])

    t0 = time.perf_counter()
    emb = embed_images(train_paths + test_paths, params["embedder"], batch_size=batch_size, num_actors=num_actors,
                       cache_dir=cache_dir or paths["cache_dir"])
    embed_s = time.perf_counter() - t0
    train_emb, test_emb = emb.iloc[:len(train_paths)].copy(), emb.iloc[len(train_paths):].copy()
    save_embeddings(train_emb, paths["train_embeddings"], params["embedder"])
    save_embeddings(test_emb, paths["test_embeddings"], params["embedder"])
    X = np.stack(train_emb["embedding"])

    t0 = time.perf_counter()
    X_test = np.stack(test_emb["embedding"]) if len(test_emb) else None
    clustered = run_clustering(X, X_test, {k: params[k] for k in CLUSTER_PARAMS}, backend=backend)
    labels, test_map, test_labels = clustered["labels"], clustered["test_map"], clustered["test_labels"]
    cluster_s = time.perf_counter() - t0
    where = clustered["where"]
    placement = {"num_gpus_requested": clustered["placement"]["num_gpus"], "reason": clustered["placement"]["reason"],
                 "host": where["host"], "gpu_ids": where["gpu_ids"], "why_not_cuml": where.get("why_not_cuml")}
    log.info("scene clusters done with backend %s on %s (%d GPU requested: %s) in %.1fs%s", clustered["backend"],
             where["host"], placement["num_gpus_requested"], placement["reason"], cluster_s,
             f"; not cuML: {placement['why_not_cuml']}" if placement["why_not_cuml"] else "")
    try:
        folds = group_folds(labels, n_folds, seed, sources=sources)
        fold_note = None
    except ValueError as e:  # one train image: nothing to split
        log.warning("no leakage-free split possible (%s): every image in fold 0", e)
        folds, fold_note = np.zeros(len(labels), int), str(e)

    train = pd.DataFrame({"img_id": [Path(n).stem for n in ds.train["name"]], "name": ds.train["name"],
                          "input_img_path": [_rel(p, data_dir) for p in ds.train["input_path"]],
                          "gt_img_path": [_rel(p, data_dir) for p in ds.train["gt_path"]],
                          "cluster": labels, "fold": folds})
    test = pd.DataFrame({"img_id": [Path(n).stem for n in ds.test["name"]], "name": ds.test["name"],
                         "input_img_path": [_rel(p, data_dir) for p in ds.test["input_path"]], "cluster": test_labels})
    write_csv(paths["train_csv"], train)
    write_csv(paths["test_csv"], test)
    plot_cluster_map(clustered["embedding"], labels, paths["cluster_map"], image_paths=train_paths,
                     test_embedding=test_map, title=f"Scene clusters ({params['embedder']}, {clustered['backend']})")

    fold_stats = describe_folds(labels, folds)  # per fold: images, clusters, noise, largest cluster's share
    summary = {**cluster_summary(labels), "embedder": params["embedder"], "backend": clustered["backend"],
               "cluster_placement": placement,
               "params": params, "effective_params": clustered["params"], "adjustments": clustered["adjustments"],
               "n_train": len(train), "n_test": len(test), "n_folds": int(folds.max()) + 1,
               "fold_sizes": np.bincount(folds).tolist(), "fold_note": fold_note,
               "fold_clusters": [d["clusters"] for d in fold_stats], "fold_noise": [d["noise"] for d in fold_stats],
               "fold_largest_cluster_share": [round(d["largest_cluster_share"], 4) for d in fold_stats],
               "folds_group_source_photos": sources is not None,
               "test_noise_share": float((test_labels < 0).mean()) if len(test) else 0.0,
               "n_embedded": int(emb.attrs["n_embedded"]), "n_cached": int(emb.attrs["n_cached"]),
               "embed_seconds": round(embed_s, 3), "cluster_seconds": round(cluster_s, 3)}
    write_text(paths["summary"], json.dumps(summary, indent=2))
    run_id = _log_mlflow(summary, paths, tracking_uri, experiment, data_dir) if log_mlflow else None
    meta = {"version": VERSION, "params": params, "fingerprint": fingerprint, "backend": clustered["backend"],
            "embedder": params["embedder"], "data_dir": str(data_dir.resolve()), "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text(paths["meta"], json.dumps(meta, indent=2))
    return PreprocessResult(train, test, summary, {k: str(v) for k, v in paths.items()}, run_id, reused=False)


def train_sources(data_dir: Path, names) -> list | None:
    """The source photo of each training image (by name) from the dataset's sources.csv, or None without one
    (a real DACON folder: its images are distinct photos). An image missing from it has no known source."""
    path = Path(data_dir) / SOURCES
    if not path.is_file():
        return None
    try:
        src = pd.read_csv(path, dtype={"img_id": str})
        photo = dict(zip(src.loc[src["split"] == "train", "img_id"], src.loc[src["split"] == "train", "photo"]))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a sources file (columns split, img_id, photo): {e}") from None
    return [photo.get(Path(n).stem) for n in names]


def _log_mlflow(summary: dict, paths: dict, tracking_uri, experiment: str, data_dir: Path) -> str:
    import mlflow

    from imgrestore.tracking import get_or_create_experiment, setup_tracking

    uri = setup_tracking(tracking_uri)
    exp_id = get_or_create_experiment(experiment, uri)
    with mlflow.start_run(experiment_id=exp_id, run_name="preprocess") as run:
        place = summary["cluster_placement"]
        mlflow.set_tags({"stage": "preprocess", "data_dir": str(data_dir.resolve()), "backend": summary["backend"],
                         "embedder": summary["embedder"], "cluster_host": place["host"]})
        eff = summary["effective_params"]
        mlflow.log_params({**{k: str(v) for k, v in summary["params"].items()}, "backend_used": summary["backend"],
                           "cluster_num_gpus": place["num_gpus_requested"], "cluster_host": place["host"],
                           "n_neighbors_used": eff["n_neighbors"], "min_cluster_size_used": eff["min_cluster_size"],
                           "n_train": summary["n_train"], "n_test": summary["n_test"]})
        mlflow.log_metrics({k: float(summary[k]) for k in (
            "n_clusters", "noise_share", "n_noise", "largest_cluster_share", "cluster_size_median",
            "test_noise_share", "n_embedded", "n_cached", "embed_seconds", "cluster_seconds")})
        for key in ("cluster_map", "summary", "train_csv", "test_csv"):
            mlflow.log_artifact(str(paths[key]))
        return run.info.run_id
