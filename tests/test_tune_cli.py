"""pipelines/tune.py before the search: the default CLIP embedder fails fast when its weights cannot be had,
and a local Ray started by tune.py does not outlive a killed driver."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tune_cli():
    spec = importlib.util.spec_from_file_location("tune_cli_checks", ROOT / "pipelines" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No network (the hub refuses at once) and an empty Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_default_clip_without_weights_or_hub_fails_fast(tune_cli, no_hub, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        tune_cli.check_embedder_weights("clip:geolocal/StreetCLIP", tmp_path / "data")
    assert time.perf_counter() - t0 < 10
    text = str(e.value)
    assert "not in the Hugging Face cache" in text and "NOT reachable" in text
    assert "--embedder effnet-lite0" in text


def test_cached_weights_or_other_embedders_need_no_hub(tune_cli, no_hub, tmp_path, monkeypatch):
    snapshot = no_hub / "models--geolocal--StreetCLIP" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (no_hub / "models--geolocal--StreetCLIP" / "refs").mkdir()
    (no_hub / "models--geolocal--StreetCLIP" / "refs" / "main").write_text("abc123")
    tune_cli.check_embedder_weights("clip", tmp_path / "data")  # in the cache: fine without the hub

    def no_network(*args, **kwargs):
        raise AssertionError("the hub must not be asked")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    tune_cli.check_embedder_weights("effnet-lite0", tmp_path / "data")
    tune_cli.check_embedder_weights("clip:/some/local/folder", tmp_path / "data")
    monkeypatch.setattr("imgrestore.preprocess.stale_reason", lambda *a, **k: None)  # outputs up to date
    tune_cli.check_embedder_weights("clip", tmp_path / "data")


def test_tune_with_data_and_no_embedder_is_an_error_before_ray(tune_cli, no_hub, tiny_dacon, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(tune_cli, "start_ray", lambda *a, **k: pytest.fail("Ray must not start"))
    t0 = time.perf_counter()
    code = tune_cli.main(["--data", str(tiny_dacon), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                          "--out", str(tmp_path / "submission.zip"), "--storage", str(tmp_path / "runs")])
    assert code == 2 and time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert "error: the default embedder clip:geolocal/StreetCLIP cannot be loaded" in err
    assert "--embedder effnet-lite0" in err
    assert not (tiny_dacon / "train_preproc_1.csv").exists()  # preprocess never ran


# --- a killed driver's local Ray -------------------------------------------------------------------------

DRIVER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("tune_cli", sys.argv[1])
tune = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tune)
tune.start_ray(None)
import ray

@ray.remote
class Trial:  # stands for a Tune trial: a worker process of the local Ray
    def pid(self):
        return os.getpid()

trial = Trial.remote()
print("ready", ray.get(trial.pid.remote()), flush=True)
time.sleep(600)
"""


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return out


def _descendants(pid: int) -> dict[int, str]:
    procs, found, todo = _processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start) in procs.items():
            if ppid == parent and child not in found:
                found[child] = start
                todo.append(child)
    return found


def _alive(pids: dict[int, str]) -> list[int]:
    procs = _processes()  # a zombie is gone for our purpose; a reused pid has another start time
    return [p for p, start in pids.items() if p in procs and procs[p][1] == start
            and "State:\tZ" not in Path(f"/proc/{p}/status").read_text()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_ray_dies_with_a_killed_driver(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "pipelines" / "tune.py")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), line
        ray_processes = _descendants(proc.pid)
        assert int(line.split()[1]) in ray_processes  # the trial's worker is one of the driver's descendants
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 150  # Ray's agents wait up to 60 s on the dead GCS before they exit
    while _alive(ray_processes) and time.monotonic() < deadline:
        time.sleep(1)
    left = _alive(ray_processes)
    assert not left, [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:200] for p in left]
