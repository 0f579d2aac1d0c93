"""pipelines/doctor.py: the node report and `--bench --quick` on this CPU machine, with and without the optional
libraries (the training-code rows included: every model family trained, the data wait, validation with both
metrics, a two-trial search); the GPU section of docs/benchmarks.md."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCTOR = ROOT / "pipelines" / "doctor.py"
BENCH_ROWS = ("UMAP + HDBSCAN, cpu", "UMAP + HDBSCAN, cuml", "ARI cuml vs cpu", "embedding, plain loop",
              "embedding, Ray Data", "embedding batch sweep (GPU)", "metric, imgrestore.metrics (CPU)",
              "metric, torch float64 on CPU", "metric, torch on GPU", "training throughput / peak memory",
              "data-wait share", "validation time per epoch", "two-trial search")
FAMILIES = ("effnet_unet", "two_stage_unet", "unet")
# A node with torch but without these (the brief's minimal GPU node): they must read "not installed here".
BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = {"ray", "mlflow", "umap", "hdbscan", "cuml", "cupy"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _doctor():
    spec = importlib.util.spec_from_file_location("doctor", DOCTOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, cwd, blocked=False, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-c", BLOCKER, str(DOCTOR)] if blocked else [sys.executable, str(DOCTOR)]
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _row(stdout: str, name: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(f"| {name}"))


@pytest.mark.slow
def test_quick_bench_has_every_row(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    proc = _run(["--bench", "--quick", "--write-docs", str(docs)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for name in _doctor().CHECKS + BENCH_ROWS:
        assert f"| {name}" in out, name
    assert "sqlite:///./mlflow.db: not created yet" in _row(out, "MLflow store")
    assert not (tmp_path / "mlflow.db").exists()  # the doctor creates nothing
    assert "HF_HUB_OFFLINE" in _row(out, "Hugging Face hub")
    _check_training_rows(out)
    search = _row(out, "two-trial search")
    if importlib.util.find_spec("ray") and importlib.util.find_spec("mlflow"):
        assert "s end to end" in search and "FAILED" not in search, search
        assert len(re.findall(r"val \d+\.\d s, score -?\d\.\d{3}", search)) == 2, search
    assert "max abs diff of the score vs imgrestore.metrics" in _row(out, "metric, torch float64 on CPU")
    if not importlib.util.find_spec("cuml"):
        assert "not installed here" in _row(out, "cuML / RAPIDS")
        assert "not installed here" in _row(out, "UMAP + HDBSCAN, cuml")
    if not _cuda():
        for name in ("GPU", "bf16", "embedding batch sweep (GPU)", "metric, torch on GPU"):
            assert "no GPU here" in _row(out, name), name
        assert "GPU figures are still to be measured" in out and "not written" in out
        assert docs.read_text() == "# Benchmarks\n\n## Other\n\nkept\n"


def _check_training_rows(out: str) -> None:
    """(d)-(g), --quick: every family measured in fp32 (on the CPU here), the GPU-only figures say so, and the
    CPU metric reproduces the torch metric's validation score (training.evaluate with either)."""
    device = "cpu" if not _cuda() else ""
    for family in FAMILIES:
        line = _row(out, f"training throughput / peak memory, {family}, fp32")
        assert " img/s" in line and device in line and "64 px, batch 2" in line, line
    wait = _row(out, "data-wait share")
    assert "% (" in wait and "ms wait" in wait and "num_workers 3 (dacon.yaml's 'auto' with its resources.cpu 4)" in wait, wait
    val = _row(out, "validation time per epoch, as training")
    assert " s for 2 images" in val, val
    cpu_val = _row(out, "validation time per epoch, CPU metric")
    diff = float(cpu_val.split("|score - torch metric's| on them ")[1].split(",")[0])
    assert diff < 1e-6, cpu_val
    gains = cpu_val.split("gain/hole ")[1].split(" |")[0].split(" vs ")
    assert gains[0] == gains[1], cpu_val
    if not _cuda():
        for name in ("training throughput / peak memory, bf16", "training throughput / peak memory, 24 GiB check"):
            assert "no GPU here" in _row(out, name), name


@pytest.mark.slow
def test_missing_libraries_are_reported_not_fatal(tmp_path):
    proc = _run(["--bench", "--quick"], cwd=tmp_path, blocked=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    for name in ("Ray", "MLflow", "UMAP + HDBSCAN, cpu", "UMAP + HDBSCAN, cuml", "embedding, Ray Data"):
        assert "not installed here" in _row(out, name), name
    assert "images/s" in _row(out, "embedding, plain loop")  # torch + transformers alone still measure
    assert "ms/image" in _row(out, "metric, torch float64 on CPU")
    assert "not installed here" in _row(out, "two-trial search")
    _check_training_rows(out)  # torch alone trains (dacon.yaml is then read as plain YAML)


def test_dacon_grid_covers_every_model_configuration():
    from imgrestore.benchmarking import gpu_dacon

    config, _ = gpu_dacon.dacon_config()
    grid = gpu_dacon.model_grid(config)
    model = config["model"]
    sizes = [len(v["choice"]) for v in model.values() if isinstance(v, dict) and "choice" in v]
    assert len(grid) == math.prod(sizes) and len({tuple(sorted(m.items())) for m in grid}) == len(grid)
    assert {m["name"] for m in grid} == set(FAMILIES)
    assert all(m["prefill"] == model["prefill"] for m in grid)
    heavy = gpu_dacon.heaviest(config)
    assert heavy["loss"]["ssim"] == config["loss"]["ssim"]["uniform"][1]
    assert heavy["loss"]["metric_m"] == max(config["loss"]["metric_m"]["choice"])
    assert heavy["cluster_balanced"] is False and heavy["batch_size"] == config["batch_size"]
    quick = gpu_dacon.one_per_family(grid)
    assert [m["name"] for m in quick] == gpu_dacon.families(grid)
    assert {m["chroma"] for m in quick} == {"regression", "classification"}


def test_gpu_section_replaces_or_appends(tmp_path):
    doctor = _doctor()
    docs = tmp_path / "b.md"
    docs.write_text("# Benchmarks\n\n## A\n\na\n\n## GPU\n\nold\n\n## Z\n\nz\n")
    doctor.write_docs(docs, "## GPU\n\nnew\n")
    assert docs.read_text() == "# Benchmarks\n\n## A\n\na\n\n## GPU\n\nnew\n\n## Z\n\nz\n"
    other = tmp_path / "c.md"
    other.write_text("# Benchmarks\n\n## A\n\na\n")
    doctor.write_docs(other, "## GPU\n\nnew\n")
    assert other.read_text() == "# Benchmarks\n\n## A\n\na\n\n## GPU\n\nnew\n"
    report = {k: "x" for k in doctor.CHECKS}
    section = doctor.gpu_section(report, [{"name": "m", "result": "1 s", "note": "n", "gpu": True}], ["--bench"])
    assert section.startswith("## GPU\n") and "| m | 1 s | n |" in section
    part = doctor.gpu_section(report, [{"name": "m", "result": "2 s", "note": "n", "gpu": True}], ["--only", "metric"],
                              ["metric"])
    assert part.startswith("## GPU: metric\n")
    doctor.write_docs(docs, part)  # a run of some parts is a section of its own: the full run's stays
    doctor.write_docs(docs, part.replace("2 s", "3 s"))
    text = docs.read_text()
    assert "## GPU\n\nnew\n" in text and text.count("## GPU: metric") == 1 and "| m | 3 s | n |" in text


def test_only_runs_the_named_parts(tmp_path):
    proc = _run(["--bench", "--quick", "--only", "metric"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metric, torch float64 on CPU" in proc.stdout and "| data-wait share" not in proc.stdout
    assert "| embedding, plain loop" not in proc.stdout
