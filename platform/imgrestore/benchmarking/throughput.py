"""Throughput and cost: embedding (Ray Data vs a plain loop), UMAP / HDBSCAN, Tune trials, 512 px inference.

The clustering steps run in one subprocess (`python -m imgrestore.benchmarking.throughput D N1 N2 ...`), sizes
in increasing order; numba's JIT is compiled first on small inputs and reported apart.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np


# -- embedding ----------------------------------------------------------------------------------------------
def bench_embedding(paths: list[str], spec: str = "effnet-lite0", batch_size: int = 16,
                    marginal_run: bool = True) -> list[dict]:
    """The same model over the same files: a plain loop in this process, then Ray Data (cache off).

    Ray Data runs twice (a quarter of the files, then all): the marginal rate between the two excludes actor
    start and model load; the end-to-end rate of the full run includes them. `marginal_run=False`: only the
    full run (no marginal rate).
    """
    import torch

    from imgrestore.embedding import create_embedder
    from imgrestore.embedding.ray_embed import embed_images, embed_images_local, plan_actors

    n, rows = len(paths), []
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    embedder = create_embedder(spec)
    embed_images_local(paths[:1], spec, embedder=embedder)  # first call: allocations, kernel choice
    t1 = time.perf_counter()
    local = embed_images_local(paths, spec, batch_size=batch_size, embedder=embedder)
    t2 = time.perf_counter()
    rows.append({"how": f"plain loop, 1 process, torch {torch.get_num_threads()} threads", "images": n,
                 "startup_s": t1 - t0, "run_s": t2 - t1, "ips": n / (t2 - t1), "ips_e2e": n / (t2 - t0)})
    plan = plan_actors()
    times, small = {}, max(1, n // 4)
    for count in (small, n) if marginal_run else (n,):
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            frame = embed_images(paths[:count], spec, batch_size=batch_size, cache_dir=cache, use_cache=False)
            times[count] = time.perf_counter() - t
    extra = times[n] - times.get(small, 0.0)
    marginal = (n - small) / extra if small in times and n > small and extra > 0 else None
    diff = float(np.abs(np.stack(frame["embedding"]) - local).max())
    rows.append({"how": f"Ray Data, {plan['size']} actor(s) x {plan['num_cpus']} CPU + decode tasks", "images": n,
                 "startup_s": max(times[n] - n / marginal, 0.0) if marginal else None, "run_s": times[n],
                 "ips": marginal, "ips_e2e": n / times[n], "max_diff": diff})
    return rows


# -- UMAP / HDBSCAN -----------------------------------------------------------------------------------------
def clustered_points(n: int, d: int, seed: int = 0) -> np.ndarray:
    """~100-point Gaussian clusters plus 10% noise, L2-normalised like image embeddings."""
    rng = np.random.default_rng(seed)
    k = max(5, n // 100)
    centers = rng.normal(size=(k, d))
    n_noise = n // 10
    X = centers[rng.integers(0, k, n - n_noise)] + rng.normal(scale=0.5, size=(n - n_noise, d))
    X = np.vstack([X, rng.normal(scale=1.5, size=(n_noise, d))]).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Peak:
    def __enter__(self):
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._t.join()


def cluster_worker(sizes: list[int], d: int) -> None:
    """UMAP(n_neighbors=5, min_dist=0, 2-D) then HDBSCAN(min_cluster_size=5), as SceneClusterer runs them, at
    each size in turn; prints one JSON line for the JIT warm-up, then one per size as soon as it is done."""
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    from imgrestore.clustering.scene_clusters import cpu_backend

    UMAP, HDBSCAN = cpu_backend()  # numba's disk cache, as SceneClusterer: the warm-up below may only load it
    kw = dict(n_neighbors=5, min_dist=0.0, n_components=2, random_state=42)
    for m in (300, 4200) if max(sizes) >= 4096 else (300,):  # JIT: exact neighbours < 4096 points, NN-descent above
        HDBSCAN(min_cluster_size=5, prediction_data=True).fit(UMAP(**kw).fit_transform(clustered_points(m, 8)))
    print(json.dumps({"warmup_s": time.perf_counter() - t}), flush=True)
    for n in sizes:
        X = clustered_points(n, d)
        with _Peak() as u:
            emb = UMAP(**kw).fit_transform(X)
        with _Peak() as h:
            labels = HDBSCAN(min_cluster_size=5, prediction_data=True).fit(emb).labels_
        print(json.dumps({"n": n, "d": d, "umap_s": u.seconds, "umap_peak_mb": u.peak, "hdbscan_s": h.seconds,
                          "hdbscan_peak_mb": h.peak, "clusters": int(labels.max() + 1),
                          "noise": float((labels < 0).mean())}), flush=True)
        del X, emb


def bench_clustering(sizes: list[int], d: int, timeout: float) -> tuple[float | None, list[dict]]:
    """All sizes, smallest first, in one subprocess (the JIT is compiled once); sizes not done within
    `timeout` seconds come back as {"n", "d", "timeout"}. Returns (JIT warm-up seconds, rows)."""
    sizes = sorted(sizes)
    cmd = [sys.executable, "-m", "imgrestore.benchmarking.throughput", str(d), *map(str, sizes)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        lines = [json.loads(x) for x in out.read().splitlines() if x.startswith("{")]
        if proc.returncode not in (0, -9):
            err.seek(0)
            raise RuntimeError(f"clustering worker failed:\n{err.read()[-2000:]}")
    warm = next((x["warmup_s"] for x in lines if "warmup_s" in x), None)
    done = {x["n"]: x for x in lines if "n" in x}
    return warm, [done.get(n, {"n": n, "d": d, "timeout": timeout}) for n in sizes]


def power_law(points: list[tuple[float, float]]):
    """Fit t = a * n**b by least squares in log space; None with fewer than two points."""
    pts = [(n, t) for n, t in points if t and t > 0]
    if len(pts) < 2:
        return None
    b, log_a = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
    return float(np.exp(log_a)), float(b)


# -- Tune: where a trial's time goes --------------------------------------------------------------------------
def trial_rows(results) -> list[dict]:
    """One row per trial from a Tune ResultGrid: model, epochs, train images/s, train/val/wall seconds, score."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        if df is None or df.empty or "train_time_s" not in df:
            continue
        model = r.config.get("model", {})
        rows.append({"trial": str(df["trial_id"].iloc[-1]), "model": model.get("name"),
                     "channels": model.get("base_channels"), "epochs": int(len(df)),
                     "ips": float(df["train_images_per_s"].mean()), "train_s": float(df["train_time_s"].sum()),
                     "val_s": float(df["val_time_s"].sum()), "wall_s": float(df["time_total_s"].max()),
                     "best_score": float(df["score"].max())})
    return rows


# -- inference at 512 px -------------------------------------------------------------------------------------
def inference_images(gts: list[np.ndarray], n: int, size: int = 512, seed: int = 0) -> list[tuple]:
    """n damaged (gray, mask) pairs at size x size from the given colour images (resized, new damage)."""
    from PIL import Image

    from imgrestore.data.damage import apply_damage

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rgb = np.asarray(Image.fromarray(gts[i % len(gts)]).resize((size, size), Image.BICUBIC))
        dmg = apply_damage(rgb, rng)
        out.append((dmg.gray, dmg.mask))
    return out


def bench_inference(models: dict[str, object], images: list[tuple]) -> list[dict]:
    """Seconds per image of `restore` (the model at full size) and of `detect_mask`, torch on every core."""
    import torch

    from imgrestore.benchmarking.report import MemorySampler
    from imgrestore.data.masks import detect_mask
    from imgrestore.submission.predict import restore

    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    for gray, _ in images:
        detect_mask(gray)
    detect_s = (time.perf_counter() - t) / len(images)
    rows = []
    for label, model in models.items():
        model = model.eval()
        params = sum(p.numel() for p in model.parameters())
        restore(model, *images[0])  # warm-up
        with MemorySampler(0.05) as mem:
            times = []
            for gray, mask in images:  # the faster of two passes per image: the machine may be shared
                passes = []
                for _ in range(2):
                    t = time.perf_counter()
                    restore(model, gray, mask)
                    passes.append(time.perf_counter() - t)
                times.append(min(passes))
        s = float(np.mean(times))
        rows.append({"model": label, "params": params, "images": len(images), "s_per_image": s, "ips": 1 / s,
                     "ips_with_detect": 1 / (s + detect_s), "detect_s": detect_s, "peak_mb": mem.peak,
                     "before_mb": mem.before})
    return rows


if __name__ == "__main__":  # the clustering worker: python -m imgrestore.benchmarking.throughput D N1 N2 ...
    cluster_worker([int(n) for n in sys.argv[2:]], int(sys.argv[1]))
