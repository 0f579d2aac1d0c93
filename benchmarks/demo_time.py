"""How long the main job takes on the embedded default, from nothing cached: `python pipelines/tune.py`.

    python benchmarks/demo_time.py [--write-docs docs/benchmarks.md]

Runs the pipeline in a fresh working folder with a fresh dataset cache (so the dataset build, preprocess,
the demo search, the champion and the submission are all timed) and reports wall time, peak memory of the
whole process tree (GNU time's max RSS of the largest process, plus Ray's), and the champion's scores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgrestore.benchmarking.report import MEMORY_HOW, load_average, MemorySampler, machine_info, machine_line, write_sections

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Main job on the embedded default"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args(argv)
    info, load_before = machine_info(), load_average()
    with tempfile.TemporaryDirectory(prefix="imgrestore-demo-") as work:
        env = {**os.environ, "IMGRESTORE_CACHE": str(Path(work) / "cache")}
        with MemorySampler() as memory:
            run = subprocess.run([sys.executable, str(ROOT / "pipelines" / "tune.py")], cwd=work, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        code, out, wall, peak = run.returncode, run.stdout.splitlines(), memory.seconds, memory.peak
    if code != 0:
        print("\n".join(out[-40:]))
        print(f"pipelines/tune.py failed with exit code {code}", file=sys.stderr)
        return code
    # the summary JSON is the pipeline's last stdout line; Ray may log after it on the merged stream
    result = json.loads(next(line for line in reversed(out) if line.startswith('{"submission"')))
    rows = [("wall time, dataset build to checked submission.zip", f"{wall:.0f} s"),
            (f"peak memory: {MEMORY_HOW}", f"{peak:.0f} MB"),
            ("champion validation score / S / M / C",
             " / ".join(f"{result[k]:.3f}" for k in ("best_score", "best_ssim", "best_masked_ssim", "best_hist_sim")))]
    table = "\n".join(["| quantity | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows])
    section = (f"{SECTION}\n\n`python pipelines/tune.py` with no arguments (`make demo` once the environment exists), "
               f"from an empty dataset cache and working folder: build the dataset from the bundled photos, "
               f"preprocess, the `search_spaces/demo.yaml` search, champion, submission.\n\n"
               f"- command: `python benchmarks/demo_time.py --write-docs docs/benchmarks.md`\n"
               f"- machine: {machine_line(info)}\n"
               f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1/5/15 min) before "
               f"{load_before}, after {load_average()}\n\n{table}\n")
    print(section)
    if args.write_docs:
        write_sections(args.write_docs, {SECTION: section})
    return 0


if __name__ == "__main__":
    sys.exit(main())
