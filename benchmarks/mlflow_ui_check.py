"""What a user sees in MLflow after a search, checked in a real headless browser and through the REST API.

    python pipelines/tune.py                                  # (make demo) writes ./mlflow.db
    python benchmarks/mlflow_ui_check.py                      # --store sqlite:///mlflow.db --experiment demo
    python benchmarks/mlflow_ui_check.py --out docs/mlflow_ui # keep the screenshots

Starts `mlflow server` on the store (a free local port), then:

* REST API (what the UI reads): the search's parent run (stage tag, source tags, the training split as dataset
  input, baselines and the champion's margin); every trial run named from its config (not `train_trial_<hash>`),
  source-tagged, tagged with how it ended and its epochs, no `config.*` metric, `lr` starting above 0; the
  registered model's `champion` alias on a version logged on the winning trial's run (its lineage), described
  with score, trial, epoch and margin.
* Chromium (Debian's `chromium`, headless): the experiment's runs page opened with the link the end-of-run
  summary prints (`?workflowType=machine_learning`, not MLflow 3's GenAI page), a trial's page and the model
  version's page; each screenshot saved, each page's rendered DOM checked for what must be on it.

Prints a table of checks and exits 1 if any failed. Needs a finished search in the store; nothing is written to
it. Not a test (it needs Chromium and a search's store): run it after `make demo`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))

from imgrestore.tuning.summary import runs_page  # noqa: E402  (the link the summary prints)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on the store, for the duration of a with-block."""

    def __init__(self, store: str):
        self.store, self.port = store, free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store,
                                      "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.base}/health", timeout=2)
                return self
            except OSError:
                time.sleep(1)
        raise TimeoutError("mlflow server did not answer within 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.base}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def browser(url: str, screenshot: Path | None, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran (Chromium headless, virtual time), and a screenshot if asked."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chrome is None:
        raise FileNotFoundError("no Chromium on PATH (Debian: apt-get install chromium)")
    common = [chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    return subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180,
                          check=True).stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="sqlite:///mlflow.db", help="the MLflow store a search wrote")
    p.add_argument("--experiment", default="demo", help="the search space's name (its MLflow experiment)")
    p.add_argument("--out", help="folder for the screenshots (default: a new temporary folder, kept)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mlflow-ui-"))
    out.mkdir(parents=True, exist_ok=True)
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append((name, bool(ok), detail))

    with Server(args.store) as srv:
        try:
            run_checks(srv, args, out, check)
        except Exception as e:  # noqa: BLE001 - a store without what is checked: say so, as a failed check
            check("the store holds a finished search", False, f"{type(e).__name__}: {e}")
    if not checks:
        return 1
    width = max(len(c[0]) for c in checks)
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    failed = [c for c in checks if not c[1]]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed; screenshots in {out}")
    return 1 if failed else 0


def run_checks(srv: Server, args, out: Path, check) -> None:
    """The REST API and browser checks (module doc); each result goes to `check(name, ok, detail)`."""
    exp = srv.get("experiments/get-by-name", experiment_name=args.experiment)["experiment"]
    runs = srv.post("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
    parents = [r for r in runs if tags(r).get("imgrestore.stage") == "tune"]
    check("a search's parent run", parents, f"{len(parents)} in experiment {args.experiment}")
    if not parents:
        return
    parent = max(parents, key=lambda r: int(r["info"]["start_time"]))
    pid = parent["info"]["run_id"]
    pt, pm = tags(parent), metrics(parent)
    check("parent: source tags", "mlflow.source.name" in pt, pt.get("mlflow.source.name", "missing"))
    inputs = parent.get("inputs", {}).get("dataset_inputs", [])
    check("parent: training split as dataset input", inputs,
          ", ".join(d["dataset"]["name"] for d in inputs) or "none")
    check("parent: baselines and champion margin", "champion_margin" in pm and
          any(k.startswith("baseline_") for k in pm), f"margin {pm.get('champion_margin')}")
    trials = [r for r in runs if tags(r).get("mlflow.parentRunId") == pid]
    check("trial runs", trials, f"{len(trials)}")
    if not trials:
        return
    names = [r["info"]["run_name"] for r in trials]
    check("trial runs named from their config", trials and not [n for n in names if n.startswith("train_trial_")],
          "; ".join(names[:3]))
    ends = [tags(r).get("imgrestore.end") for r in trials]
    check("trial runs tagged with how they ended", all(ends), "; ".join(map(str, ends)))
    check("trial runs: epochs and source tags", all("imgrestore.epochs" in tags(r) and "mlflow.source.name"
                                                    in tags(r) for r in trials))
    check("trial runs: no config.* metric charts", not [k for r in trials for k in metrics(r)
                                                         if k.startswith("config")])
    lrs = [srv.get("metrics/get-history", run_id=r["info"]["run_id"], metric_key="lr").get("metrics", [])
           for r in trials]
    firsts = [min(h, key=lambda m: m["step"])["value"] for h in lrs if h]
    check("lr curves start above 0", firsts and min(firsts) > 0, f"first lr {firsts}")
    model = f"imgrestore-{args.experiment}"
    version = srv.get("registered-models/alias", name=model, alias="champion")["model_version"]
    winner = next((r for r in trials if r["info"]["run_id"] == version["run_id"]), None)
    check("champion logged on the winning trial's run (or, a classical winner, the parent's)",
          winner is not None or version["run_id"] == pid,
          f"version {version['version']} on {winner['info']['run_name'] if winner else 'the parent run'}")
    desc = version.get("description", "")
    check("champion version described (score, trial, epoch, margin)",
          all(w in desc for w in ("score", "margin")), desc[:160].replace("\n", " "))

    pages = {
        # the runs table lists the search's run (its trials are nested under it, collapsed) and its dataset
        "runs": (runs_page(exp["experiment_id"], srv.base),
                 [parent["info"]["run_name"], inputs[0]["dataset"]["name"] if inputs else "Dataset",
                  "matching runs"]),
        "trial": (f"{srv.base}/#/experiments/{exp['experiment_id']}/runs/{trials[0]['info']['run_id']}"
                  "?workflowType=machine_learning",
                  [names[0], "imgrestore.end"] if names else []),
        "model_version": (f"{srv.base}/#/models/{model}/versions/{version['version']}", ["champion"]),
    }
    for page, (url, wanted) in pages.items():
        shot = out / f"mlflow_{page}.png"
        try:
            dom = browser(url, shot)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            check(f"browser: {page} page", False, f"{type(e).__name__}: {e}")
            continue
        missing = [w for w in wanted if w not in dom]
        check(f"browser: {page} page shows {', '.join(wanted) or 'something'}", shot.is_file() and not missing,
              f"{shot} ({shot.stat().st_size // 1024} KB)" + (f"; missing {missing}" if missing else ""))
    genai = "workflowType=machine_learning" in pages["runs"][0]
    check("the summary's link asks for the training-runs view", genai, pages["runs"][0])


if __name__ == "__main__":
    sys.exit(main())
