"""What this node has for imgrestore, in seconds; with --bench, what its GPU (or CPU) does with each stage.

    PYTHONPATH=platform python3 pipelines/doctor.py                 # Python, torch, CUDA, cuML, Ray, MLflow, weights
    PYTHONPATH=platform python3 pipelines/doctor.py --bench         # + clustering, embedding, metric, training
    PYTHONPATH=platform python3 pipelines/doctor.py --bench --quick # tiny sizes (a CPU test runs this)
    ... --bench --write-docs docs/benchmarks.md                     # also write the "GPU" section (GPU nodes only)

Runs from the source root without installing, on any torch >= 2.11; every other library (ray, mlflow,
umap-learn, hdbscan, cuml, transformers...) is optional and imported inside the check that needs it: a missing
one is reported as "not installed here", never a crash. Nothing is started or created: a Ray cluster is only
looked at if one is running, the MLflow store only read. (The --bench embedding rows start a throwaway local
Ray on this node; so does the two-trial search, with a throwaway MLflow store in a temporary folder.)

--bench also measures the training code (imgrestore.benchmarking.gpu_training, on a synthetic 512 px DACON-format set built in a
temporary folder): training images/s and peak GPU memory of every search_spaces/dacon.yaml model configuration in
bf16 and fp32 (flagged over 24 GiB), the share of a step spent waiting for the DataLoader, one epoch's validation
time (CPU metric as training runs it, and the torch metric on the device), and a two-trial search end to end.
Without --quick those rows measure on a GPU only; --quick runs them tiny, on a CPU too (fp32, labelled).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("imgrestore") is None:  # run from a checkout without PYTHONPATH=platform
    sys.path.insert(0, str(ROOT / "platform"))

NOT_INSTALLED = "not installed here"
NO_GPU = "no GPU here"
STREETCLIP = "geolocal/StreetCLIP"
CHECKS = ("python", "machine", "torch", "CUDA", "GPU", "GPU memory", "bf16", "cuML / RAPIDS", "Ray",
          "Ray cluster", "MLflow", "MLflow store", "transformers", "StreetCLIP weights", "Hugging Face hub")


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version(dist: str, module: str | None = None) -> str | None:
    """The installed version of `dist`, or None when its module cannot be found."""
    if not _find(module or dist):
        return None
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "installed (version unknown)"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# ----------------------------------------------------------------------------- node checks


def check_torch(out: dict) -> None:
    try:
        import torch
    except ImportError as e:
        for key in ("torch", "CUDA", "GPU", "GPU memory", "bf16"):
            out[key] = f"{NOT_INSTALLED} ({e})" if key == "torch" else "-"
        return
    out["torch"] = f"{torch.__version__} ({torch.get_num_threads()} CPU threads)"
    if not torch.cuda.is_available():
        built = torch.version.cuda
        out["CUDA"] = f"not available (torch built for CUDA {built}, but {NO_GPU})" if built else \
            f"not available (CPU-only torch build; {NO_GPU})"
        out["GPU"] = out["GPU memory"] = out["bf16"] = NO_GPU
        return
    n = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(n)]
    out["CUDA"] = f"CUDA {torch.version.cuda}, {n} device(s), CUDA_VISIBLE_DEVICES=" \
                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"
    out["GPU"] = "; ".join(f"{i}: {p.name} (compute capability {p.major}.{p.minor})" for i, p in enumerate(props))
    free, total = torch.cuda.mem_get_info(0)
    out["GPU memory"] = f"{total / 2**30:.1f} GiB on GPU 0 ({free / 2**30:.1f} GiB free)"
    out["bf16"] = "supported (embedding actors use bf16 weights)" if torch.cuda.is_bf16_supported() else \
        "not supported: fp16 is used instead"


def check_cuml(out: dict) -> None:
    if not _find("cuml"):
        out["cuML / RAPIDS"] = f"{NOT_INSTALLED} (pip install 'imgrestore[gpu]' on a GPU node; clustering uses " \
                               "umap-learn + hdbscan)"
        return
    try:
        from imgrestore.clustering.scene_clusters import cuml_available

        import cuml

        ok, why = cuml_available()
        out["cuML / RAPIDS"] = f"cuML {cuml.__version__}: " + ("usable, a GPU is visible" if ok else why)
    except Exception as e:
        out["cuML / RAPIDS"] = f"installed but fails to import: {_one_line(e)}"


def check_ray(out: dict, address: str) -> None:
    try:
        import ray
    except ImportError as e:
        out["Ray"] = f"{NOT_INSTALLED} ({e})"
        out["Ray cluster"] = "-"
        return
    out["Ray"] = f"{ray.__version__}; {_local_gpus()} GPU(s) on this node as Ray would count them"
    if address == "none":
        out["Ray cluster"] = "not looked for (--ray-address none)"
        return
    running = address != "auto" or os.environ.get("RAY_ADDRESS") or _ray_processes()
    if not running:
        out["Ray cluster"] = "no Ray cluster running here (none started)"
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        res = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        out["Ray cluster"] = f"running: {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"
    except Exception as e:
        out["Ray cluster"] = f"none reachable at {address!r} ({_one_line(e)}); none started"
    finally:
        if ray.is_initialized():
            ray.shutdown()  # disconnects; the cluster keeps running


def _local_gpus() -> str:
    try:  # what `ray start` would detect (a private API: fall back to torch)
        from ray._private.accelerators import get_accelerator_manager_for_resource

        return str(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators())
    except Exception:
        try:
            import torch

            return str(torch.cuda.device_count())
        except ImportError:
            return "?"


def _ray_processes() -> bool:
    """A Ray GCS server is running on this machine (so `address='auto'` has something to connect to)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"gcs_server" in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def check_mlflow(out: dict, uri: str) -> None:
    ver = _version("mlflow")
    out["MLflow"] = ver or NOT_INSTALLED
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser()
        if not db.is_file():
            writable = os.access(db.parent if db.parent.exists() else Path.cwd(), os.W_OK)
            out["MLflow store"] = f"{uri}: not created yet (the first run creates it); folder " \
                                  f"{'writable' if writable else 'NOT writable'}"
            return
        try:  # read-only: the doctor never migrates or creates anything
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=3) as con:
                exps = con.execute("SELECT count(*) FROM experiments").fetchone()[0]
                runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
            out["MLflow store"] = f"{uri}: reachable, {exps} experiment(s), {runs} run(s), {db.stat().st_size / 2**20:.1f} MB"
        except Exception as e:
            out["MLflow store"] = f"{uri}: unreadable ({_one_line(e)})"
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3) as r:
                out["MLflow store"] = f"{uri}: server reachable ({r.status})"
        except Exception as e:
            out["MLflow store"] = f"{uri}: server NOT reachable ({_one_line(e)})"
    else:
        out["MLflow store"] = f"{uri}: not checked (only sqlite:/// and http(s):// are)"


def check_weights(out: dict) -> None:
    out["transformers"] = _version("transformers") or f"{NOT_INSTALLED} (the CLIP embedder needs it; " \
                                                      "effnet-lite0 does not)"
    from imgrestore.embedding.hub import cached_weights, hub_reachable

    cached, where = cached_weights(STREETCLIP)
    if cached:
        out["StreetCLIP weights"] = f"in the cache: {cached} ({Path(cached).stat().st_size / 2**30:.2f} GiB)"
    else:
        out["StreetCLIP weights"] = f"{STREETCLIP} not in {where}"
    ok, how = hub_reachable(STREETCLIP)
    if ok is None:
        out["Hugging Face hub"] = how
    elif ok:
        out["Hugging Face hub"] = f"reachable ({how}): the weights can be downloaded"
    else:
        out["Hugging Face hub"] = f"NOT reachable ({how})" + ("" if cached else
                                                              ": use --embedder effnet-lite0 or a local folder")


def node_report(ray_address: str, tracking_uri: str) -> dict:
    out: dict[str, str] = {}
    out["python"] = f"{platform.python_version()} ({sys.executable})"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {platform.platform()}"
    for check in (check_torch, check_cuml):
        check(out)
    check_ray(out, ray_address)
    check_mlflow(out, tracking_uri)
    check_weights(out)
    return out


# ----------------------------------------------------------------------------- bench + docs


PARTS = ("clustering", "embedding", "embedding-sweep", "metric", "training", "data-wait", "validation", "search")


def run_bench(quick: bool, only: list[str] | None = None) -> list[dict]:
    from imgrestore.benchmarking import gpu, gpu_training as gt

    by_part = {"clustering": ("(a) clustering", gpu.bench_clustering),
               "embedding": ("(b) embedding", gpu.bench_embedding),
               "embedding-sweep": ("(b) embedding batch sweep", gpu.bench_embedding_sweep),
               "metric": ("(c) validation metric", gpu.bench_metric),
               "training": (gt.TRAIN_NAME, gt.bench_training_throughput),
               "data-wait": (gt.DATA_WAIT_NAME, gt.bench_data_wait),
               "validation": (gt.VALIDATION_NAME, gt.bench_validation_epoch),
               "search": (gt.SEARCH_NAME, gt.bench_two_trial_search)}
    assert set(by_part) == set(PARTS)
    benches = [by_part[part] for part in PARTS if not only or part in only]
    rows = []
    for title, fn in benches:
        t = time.perf_counter()
        print(f"measuring {title} ...", flush=True)
        try:
            got = fn(quick)
        except Exception as e:  # a bench must never take the report down
            got = [gpu.row(title, gpu.missing(e))]
        rows += got
        for r in got:  # as they come: a run stopped part-way still shows what it measured
            print(f"  | {r['name']} | {r['result']} | {r['note']} |", flush=True)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return rows


def table(rows: list[tuple], header: tuple) -> str:
    """A Markdown table (readable as plain text too)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def gpu_section(report: dict, rows: list[dict], argv: list[str], only: list[str] | None = None) -> str:
    """The "## GPU" section; a run of some parts only (--only) is its own section, "## GPU: <parts>", so that it
    never replaces the full run's figures."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return "\n".join([
        "## GPU" + (f": {', '.join(only)}" if only else ""), "",
        "What `pipelines/doctor.py --bench` measured on a GPU node (the other rows of its output are in the run log).",
        "", f"- command: `python pipelines/doctor.py {' '.join(argv)}`",
        f"- machine: {report['GPU']}; {report['GPU memory']}; {report['CUDA']}; {report['machine']}",
        f"- software: Python {platform.python_version()}, torch {report['torch']}, cuML: {report['cuML / RAPIDS']}",
        f"- date: {when}", "",
        table([(r["name"], r["result"], r["note"]) for r in rows], ("measurement", "result", "note")), ""])


def write_docs(path: Path, section: str) -> None:
    """Replace the file's section with the same heading as `section` (up to the next '## ' heading), or append it."""
    from imgrestore.benchmarking.report import write_sections

    write_sections(path, {section.splitlines()[0]: section})


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", action="store_true",
                   help="also measure clustering, embedding, the metric and the training code")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU), for tests")
    p.add_argument("--only", nargs="+", choices=PARTS, metavar="PART",
                   help=f"measure these parts only ({', '.join(PARTS)}); --write-docs then writes them as a "
                        "section of their own")
    p.add_argument("--write-docs", metavar="PATH", help="write the GPU measurements as the 'GPU' section of PATH")
    p.add_argument("--ray-address", default="auto",
                   help="Ray cluster to look at: auto (a running one, if any), an address, or none")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///./mlflow.db"
    report = node_report(args.ray_address, uri)
    print(f"imgrestore doctor: this node ({time.perf_counter() - t0:.1f} s)\n")
    print(table([(k, report.get(k, "-")) for k in CHECKS], ("check", "result")))
    if not args.bench:
        return 0
    print()
    rows = run_bench(args.quick, args.only)
    print(f"\nmeasurements{' (--quick: tiny sizes)' if args.quick else ''}, {time.perf_counter() - t0:.0f} s in all\n")
    print(table([(r["name"], r["result"], r["note"]) for r in rows], ("measurement", "result", "note")))
    on_gpu = any(r["gpu"] for r in rows)
    if not on_gpu:
        print("\nNo GPU measurement here: the GPU figures are still to be measured (run this with --bench on a "
              "GPU node).")
    if args.write_docs:
        if on_gpu:
            write_docs(Path(args.write_docs), gpu_section(report, rows, argv, args.only))
            print(f"wrote the GPU section of {args.write_docs}")
        else:
            print(f"{args.write_docs} not written: nothing was measured on a GPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
