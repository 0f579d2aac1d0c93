"""Shared pieces of the benchmark: the machine line, memory sampling, markdown tables and sections."""
from __future__ import annotations

import math
import os
import platform as pyplatform
import re
import threading
import time
from pathlib import Path


# -- the machine ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return pyplatform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict:
    """What a row of the tables was measured on."""
    import torch

    import ray

    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"arch": pyplatform.machine(), "cores": os.cpu_count(), "cpu": cpu_model(), "mem_gb": mem_gb,
            "gpu": gpu, "python": pyplatform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_start": load_average()}


def machine_line(info: dict) -> str:
    return (f"{info['arch']}, {info['cores']} cores ({info['cpu']}), {info['mem_gb']:.0f} GB RAM, {info['gpu']}; "
            f"Python {info['python']}, torch {info['torch']}, Ray {info['ray']}")


def busy(machine: dict, load_end: str) -> bool:
    """Was the CPU shared: a 1-minute load average above 3/4 of the cores at the start or the end?"""
    try:
        return max(float(x.split(" / ")[0]) for x in (machine["load_start"], load_end)) > 0.75 * machine["cores"]
    except (ValueError, TypeError):
        return False


def header(res, what: str) -> list[str]:
    """The command, machine and date lines of a section written from a BenchResult."""
    m = res.machine
    load = (f"load average (1/5/15 min) at start {m['load_start']}, at end {res.load_end}"
            + (f" on {m['cores']} cores: other jobs shared the CPU, so absolute times are pessimistic"
               if busy(m, res.load_end) else ""))
    return [f"- command: `{res.cfg.command}`",
            f"- machine: {machine_line(m)}",
            f"- date: {m['date']}; {what}; {load}; every comparison below comes from this one run"]


# -- memory -----------------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB; 0 if the process is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split between their users), else RSS; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss_mb(pid)


def tree_memory_mb(root: int | None = None) -> float:
    """Summed PSS of a process and all its descendants (a local Ray's raylet and workers included)."""
    root = root or os.getpid()
    kids, todo, total = _children_map(), [root], 0.0
    while todo:
        pid = todo.pop()
        total += _pss_mb(pid)
        todo += kids.get(pid, [])
    return total


MEMORY_HOW = ("summed PSS of the benchmark process and every descendant (the local Ray's raylet, GCS and "
              "workers included), sampled every 0.25 s")


class MemorySampler:
    """Peak of `tree_memory_mb()` while the block runs: `with MemorySampler() as m: ...; m.peak, m.before`."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.available = Path("/proc/self/stat").is_file()

    def _sample(self) -> float:
        return tree_memory_mb() if self.available else float("nan")

    def __enter__(self):
        self.before = self.peak = self._sample()
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
        self.seconds = time.perf_counter() - self.t0


class Stages:
    """Wall time and peak memory of each named stage of the run."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn, *args, note: str = "", **kwargs):
        print(f"[benchmark] {name} ...", flush=True)
        with MemorySampler() as mem:
            out = fn(*args, **kwargs)
        self.rows.append({"stage": name, "seconds": mem.seconds, "peak_mb": mem.peak, "before_mb": mem.before,
                          "note": note})
        print(f"[benchmark] {name}: {mem.seconds:.1f} s, peak {mem.peak:.0f} MB", flush=True)
        return out


# -- markdown ---------------------------------------------------------------------------------------------
def model_desc(model: dict | None) -> str:
    """A model config in a few words: family, width, network size, chroma head, prefill, encoder."""
    if not model:
        return "-"
    parts = [f"{model['base_channels']} ch" if "base_channels" in model else "",
             f"depth {model['depth']}" if "depth" in model else "",
             f"net {model['net_size']} px" if model.get("net_size") else "",
             f"chroma {model['chroma']}" if "chroma" in model else "",
             f"prefill {model['prefill']}" if "prefill" in model else "",
             f"encoder {model['encoder']}" if "encoder" in model else "",
             "encoder random-init" if model.get("pretrained") is False else "",
             "encoder frozen" if model.get("freeze_encoder") else "",
             f"decoding {model['decoding']}" if model.get("decoding") not in (None, "none") else ""]
    return f"{model['name']} " + ", ".join(p for p in parts if p) if any(parts) else model["name"]


def fmt(x, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{nd}f}"


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """Markdown table lines; `align`: one character per column, 'l' or 'r' (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def publish(sections: dict[str, str], doc: str | os.PathLike | None = None) -> None:
    """What every benchmark script ends with: print its `## ...` sections, and write them into `doc` if given."""
    for text in sections.values():
        print(text, flush=True)
    if doc:
        write_sections(doc, sections)
        print(f"wrote {', '.join(repr(t) for t in sections)} into {doc}")


def write_sections(doc: str | os.PathLike, sections: dict[str, str]) -> None:
    """Add or replace the given `## ...` sections of `doc` (read just before writing); others are kept."""
    from imgrestore.data.io import write_text

    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    for title, body in sections.items():
        body = body.rstrip("\n") + "\n"
        pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _: body + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + body
    write_text(doc, text.rstrip("\n") + "\n")
