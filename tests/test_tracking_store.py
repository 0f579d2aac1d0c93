"""The local MLflow store (imgrestore.tracking.store): created safely by processes starting at the same time."""
from __future__ import annotations

import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from imgrestore.tracking import setup_tracking

# Each process waits for the go file, then does what every imgrestore job does first: set up tracking and
# find (or create) an experiment. Without the lock, MLflow's table creation races ("table ... already exists",
# or an alembic "expected to match one row" error in the loser).
WORKER = """
import sys, time
from pathlib import Path
from imgrestore.tracking import get_or_create_experiment, setup_tracking
uri, go = sys.argv[1], Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
uri = setup_tracking(uri)
print(get_or_create_experiment("race", uri))
"""


def test_two_processes_create_a_fresh_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:  # imports done everywhere: start them together
        assert p.stdout.readline().strip() == "ready", p.communicate()
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert len({out.split()[-1] for out, _ in outputs}) == 1  # one experiment, found by all
    assert sorted(e.name for e in MlflowClient(uri).search_experiments()) == ["Default", "race"]


def test_setup_on_an_existing_store_is_cheap(tmp_path):
    uri = setup_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    t0 = time.perf_counter()
    assert setup_tracking(uri) == uri
    assert time.perf_counter() - t0 < 2
    assert (tmp_path / ".mlflow.db.lock").is_file() and (tmp_path / "mlflow.db").is_file()
