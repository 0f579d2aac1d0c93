"""pipelines/doctor.py: the node report and `--bench --quick` on this CPU machine, with and without the optional
libraries; the GPU section of docs/benchmarks.md."""
from __future__ import annotations

import importlib.util
import os
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
    for hook in ("data-wait share", "two-trial search"):
        assert "not yet wired" in _row(out, hook)
    assert "max abs diff of the score vs imgrestore.metrics" in _row(out, "metric, torch float64 on CPU")
    if not importlib.util.find_spec("cuml"):
        assert "not installed here" in _row(out, "cuML / RAPIDS")
        assert "not installed here" in _row(out, "UMAP + HDBSCAN, cuml")
    if not _cuda():
        for name in ("GPU", "bf16", "embedding batch sweep (GPU)", "metric, torch on GPU"):
            assert "no GPU here" in _row(out, name), name
        assert "GPU figures are still to be measured" in out and "not written" in out
        assert docs.read_text() == "# Benchmarks\n\n## Other\n\nkept\n"


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
