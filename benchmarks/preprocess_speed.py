"""Preprocess speed: embedding throughput (Ray Data vs a plain loop) and UMAP / HDBSCAN time and memory.

    python benchmarks/preprocess_speed.py [--images 128] [--repeats 2] [--size 512] [--points 5000 30000] [--clip]
        [--write-docs docs/benchmarks.md]

Embedding: the same model over the same images (crops of /work/shared/photos if present, else skimage photos,
saved as PNG), once in a plain single-process loop and once through Ray Data (`embed_images`, cache off).
Clustering: each measurement runs in its own subprocess (peak RSS sampled during the step; numba's JIT is
warmed up on 4200 points first and reported apart) on random clustered 512-d unit vectors (not real
embeddings: UMAP/HDBSCAN time depends mainly on n and d). cuML is measured only where it imports with a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SECTION = "## Preprocess"
from imgrestore.benchmarking.report import publish  # noqa: E402
from imgrestore.benchmarking.throughput import clustered_points  # noqa: E402  (one generator for both benchmarks)

PHOTOS = Path("/work/shared/photos")


# -- clustering workers (one subprocess per measurement) -------------------------------------------------
def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        import threading

        self.before = self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, current_rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def worker(kind: str, n: int, backend: str) -> dict:

    if backend == "cuml":
        from cuml.cluster import HDBSCAN
        from cuml.manifold import UMAP
    else:
        from imgrestore.clustering.scene_clusters import cpu_backend

        UMAP, HDBSCAN = cpu_backend()  # as SceneClusterer: numba's disk cache on (the warm-up may only load it)
    X = clustered_points(n, 512)
    # warm-up: numba JIT (cpu) / CUDA context (cuml). More than 4096 points, so that umap-learn takes its
    # approximate (pynndescent) neighbour path and compiles it here too; 32-d to keep it short.
    t = time.perf_counter()
    E_small = UMAP(n_neighbors=5, min_dist=0.0, n_components=2, random_state=42).fit_transform(
        clustered_points(4200, d=32, seed=1))
    HDBSCAN(min_cluster_size=5).fit(E_small)
    warm = time.perf_counter() - t
    map_file = Path(tempfile.gettempdir()) / f"imgrestore_bench_map_{backend}_{n}_{os.getppid()}.npy"
    if kind == "hdbscan":  # HDBSCAN runs on the 2-D map: the UMAP row's output, else made here (untimed)
        if map_file.is_file():
            X = np.load(map_file)
            map_file.unlink()
        else:
            X = UMAP(n_neighbors=5, min_dist=0.0, n_components=2, random_state=42).fit_transform(X)
    with RssSampler() as mem:
        t = time.perf_counter()
        if kind == "umap":
            E = UMAP(n_neighbors=5, min_dist=0.0, n_components=2, random_state=42).fit_transform(X)
            extra = {}
        else:
            labels = np.asarray(HDBSCAN(min_cluster_size=5, prediction_data=True).fit(X).labels_)
            extra = {"clusters": int(labels.max() + 1), "noise": float((labels < 0).mean())}
        wall = time.perf_counter() - t
    if kind == "umap":
        np.save(map_file, np.asarray(E, dtype=np.float32))
    return {"kind": kind, "n": n, "backend": backend, "seconds": wall, "warmup_s": warm,
            "rss_before_mb": mem.before, "peak_rss_mb": mem.peak, **extra}


def run_worker(kind: str, n: int, backend: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(n), backend]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "n": n, "backend": backend, "timeout": timeout,
                "total_s": time.perf_counter() - t}
    if proc.returncode != 0:
        return {"kind": kind, "n": n, "backend": backend, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- embedding ------------------------------------------------------------------------------------------
def make_images(folder: Path, count: int, size: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    if PHOTOS.is_dir():
        sources = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        load = lambda i: Image.open(sources[i % len(sources)]).convert("RGB")  # noqa: E731
        origin = f"crops of {len(sources)} photos in {PHOTOS}"
    else:
        import skimage.data

        arrays = [getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
        load = lambda i: Image.fromarray(arrays[i % len(arrays)])  # noqa: E731
        origin = "crops of skimage.data photos"
    paths = []
    for i in range(count):
        im = load(i)
        side = int(min(im.size) * rng.uniform(0.6, 1.0))
        left, top = rng.integers(0, im.size[0] - side + 1), rng.integers(0, im.size[1] - side + 1)
        path = folder / f"IMG_{i:05d}.png"
        im.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS).save(path)
        paths.append(str(path))
    return paths, origin


def tiny_vit_b32(folder: Path) -> str:
    """A CLIP with ViT-B/32's architecture and random weights (the hub is unreachable here)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    cfg = CLIPConfig(text_config=dict(num_hidden_layers=1, hidden_size=64, intermediate_size=64,
                                      num_attention_heads=2),
                     vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, image_size=224, patch_size=32),
                     projection_dim=512)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return str(folder)


def _alarm(signum, frame):
    raise TimeoutError


def bench_embedding(paths: list[str], spec: str, label: str, batch_size: int, timeout: float,
                    repeats: int = 2) -> list[dict]:
    """Best (shortest) of `repeats` timings for each way, to damp other jobs on a shared machine."""
    import torch

    import ray
    from imgrestore.embedding import create_embedder
    from imgrestore.embedding.ray_embed import embed_images, embed_images_local

    n, rows, cpus = len(paths), [], os.cpu_count() or 1
    small = 1  # a one-image run costs the startup only
    for threads in sorted({cpus, 1}, reverse=True):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        emb = create_embedder(spec)
        load = time.perf_counter() - t
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            local = embed_images_local(paths, spec, batch_size=batch_size, embedder=emb)
            runs.append(time.perf_counter() - t)
        run = min(runs)
        rows.append({"model": label, "how": f"plain loop, 1 process, torch {threads} thread(s)",
                     "ips": n / run, "ips_e2e": n / (run + load), "seconds": run + load})
    torch.set_num_threads(cpus)
    # Ray variants: the default plan (one CPU kept free for decoding), and, on a small machine, Ray told one
    # logical CPU more than there are cores so a single actor can use every core while decode tasks still run.
    variants = [("Ray Data, default plan", cpus, {})]
    if cpus <= 4:
        variants.append((f"Ray Data, Ray told {cpus + 1} CPUs (oversubscribed)", cpus + 1, {}))
    for how, ray_cpus, kw in variants:
        from imgrestore.embedding.ray_embed import plan_actors

        ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(int(timeout))
        try:
            plan = plan_actors(**kw)
            times = {small: [], n: []}
            for _ in range(repeats):
                for count in (small, n):  # the rate between the two runs excludes actor start and model load
                    with tempfile.TemporaryDirectory() as cache:
                        t = time.perf_counter()
                        frame = embed_images(paths[:count], spec, batch_size=batch_size, cache_dir=cache,
                                             use_cache=False, **kw)
                        times[count].append(time.perf_counter() - t)
            times = {k: min(v) for k, v in times.items()}
            run = times[n]
            diff = float(np.abs(np.stack(frame["embedding"]) - local).max())
            rows.append({"model": label, "how": f"{how}: {plan['size']} actor(s) x {plan['num_cpus']} CPU",
                         "ips": (n - small) / max(times[n] - times[small], 1e-9), "ips_e2e": n / run,
                         "seconds": run, "max_diff": diff})
        except TimeoutError:
            rows.append({"model": label, "how": f"{how}: timed out after {timeout:.0f} s", "ips": None,
                         "ips_e2e": None, "seconds": None})
        finally:
            signal.alarm(0)
            ray.shutdown()
    return rows


# -- report ---------------------------------------------------------------------------------------------
def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def render(args, origin, emb_rows, cl_rows, started, load_avg) -> str:
    import torch

    import ray
    cpus = os.cpu_count()
    lines = [SECTION, "",
             "Embedding throughput (Ray Data vs a plain loop) and UMAP / HDBSCAN cost, "
             "`benchmarks/preprocess_speed.py`.", "",
             f"- command: `python benchmarks/preprocess_speed.py {' '.join(sys.argv[1:])}`",
             f"- machine: {pyplatform.machine()}, {cpus}-core CPU, no GPU, shared with other jobs "
             f"(1/5/15-min load average at the start {load_avg}); Python {pyplatform.python_version()}, "
             f"torch {torch.__version__}, ray {ray.__version__}",
             f"- date: {started}", "",
             f"### Embedding ({args.images} images, {args.size}x{args.size} PNG, {origin}; batch {args.batch_size}; "
             f"best of {args.repeats})",
             "",
             "| model | how | images/s (model work) | images/s end to end | seconds | max abs diff vs loop |",
             "|---|---|---:|---:|---:|---:|"]
    for r in emb_rows:
        diff = "-" if "max_diff" not in r else "%.1e" % r["max_diff"]
        lines.append(f"| {r['model']} | {r['how']} | {fmt(r['ips'])} | {fmt(r['ips_e2e'])} | {fmt(r['seconds'])} | "
                     f"{diff} |")
    lines += ["", "End to end: model load included, and for Ray the actor start and dataset planning (the Ray "
              "cluster itself was started before timing). Model work: the plain loop's decode + inference time; "
              "for Ray (n - 1) / (t(n images) - t(1 image)), so actor start and model load cancel out. "
              "On a shared machine every number moves with the other jobs' load (see the load average); torch "
              "with several threads suffers most, since its threads wait for each other when a core is taken.",
              "",
              "### UMAP + HDBSCAN (random clustered 512-d unit vectors, not real embeddings)", "",
              "UMAP(n_neighbors=5, min_dist=0.0, n_components=2, random_state=42) on 512-d; "
              "HDBSCAN(min_cluster_size=5) on the 2-D map. One subprocess per row; numba JIT warm-up (4200 points, "
              "32-d) reported apart; RSS "
              "sampled every 20 ms (the baseline holds the imports and the input).", "",
              "| step | backend | points | wall s | JIT / warm-up s | peak RSS MB during step | RSS before MB | note |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in cl_rows:
        if "timeout" in r:
            note = f"timed out after {r['timeout']:.0f} s"
            lines.append(f"| {r['kind']} | {r['backend']} | {r['n']} | > {r['timeout']:.0f} | - | - | - | {note} |")
        elif "error" in r:
            lines.append(f"| {r['kind']} | {r['backend']} | {r['n']} | - | - | - | - | error: {r['error']} |")
        else:
            note = f"{r['clusters']} clusters, {r['noise']:.0%} noise" if r["kind"] == "hdbscan" else ""
            lines.append(f"| {r['kind']} | {r['backend']} | {r['n']} | {r['seconds']:.2f} | {r['warmup_s']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="embedding timings: best of this many")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--clip", action="store_true", help="also a CLIP ViT-B/32-sized model (random weights)")
    ap.add_argument("--clip-images", type=int, default=32)
    ap.add_argument("--points", type=int, nargs="+", default=[5000, 30000])
    ap.add_argument("--timeout", type=float, default=420,
                    help="seconds per measurement (embedding variant or clustering step)")
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--write-docs", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.worker:
        kind, n, backend = args.worker
        print(json.dumps(worker(kind, int(n), backend)))
        return 0

    started, load_avg = time.strftime("%Y-%m-%d %H:%M"), " / ".join(f"{x:.1f}" for x in os.getloadavg())
    emb_rows, origin = [], "-"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_embedding:
            (tmp / "imgs").mkdir()
            paths, origin = make_images(tmp / "imgs", args.images, args.size)
            emb_rows += bench_embedding(paths, "effnet-lite0", "EfficientNet-Lite0 (1280-d)", args.batch_size,
                                        args.timeout, args.repeats)
            if args.clip:
                model = tiny_vit_b32(tmp / "vitb32")
                emb_rows += bench_embedding(paths[:args.clip_images], f"clip:{model}",
                                            f"CLIP ViT-B/32 size, random weights ({args.clip_images} images)",
                                            args.batch_size, args.timeout, args.repeats)
            for r in emb_rows:
                print(r, flush=True)
    from imgrestore.clustering import cuml_available

    backends = ["cpu"] + (["cuml"] if cuml_available()[0] else [])
    cl_rows = []
    for backend in backends:
        for n in args.points:
            for kind in ("umap", "hdbscan"):
                r = run_worker(kind, n, backend, args.timeout)
                print(r, flush=True)
                cl_rows.append(r)
    load_avg += ", at the end " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
    section = render(args, origin, emb_rows, cl_rows, started, load_avg)
    if "cuml" not in backends:
        section += "\ncuML: not measured (no GPU in this session; `--backend cuml` needs RAPIDS cuML and a GPU).\n"
    publish({SECTION: section}, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
