"""Can a Hugging Face model be loaded here: its weights in the local cache, or the hub reachable?

Asked before preprocess starts (`pipelines/tune.py`) and by `pipelines/doctor.py`, so an offline machine
fails in seconds with advice instead of after a minute of download retries. Imports nothing heavy.
"""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def cached_weights(model_id: str) -> tuple[str | None, str]:
    """(path of the model's weights in the Hugging Face cache or None, where it looked)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # no huggingface_hub: look where it would have put them
        home = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
        snaps = home.expanduser() / f"models--{model_id.replace('/', '--')}" / "snapshots"
        hits = [p for p in snaps.glob("*/*") if p.name in WEIGHT_FILES]
        return (str(hits[0]) if hits else None), str(snaps)
    for name in WEIGHT_FILES:
        path = try_to_load_from_cache(model_id, name)
        if isinstance(path, str):
            return path, "the Hugging Face cache"
    return None, "the Hugging Face cache"


def hub_reachable(model_id: str, timeout: float = 3.0) -> tuple[bool | None, str]:
    """(True/False, what happened); None when HF_HUB_OFFLINE forbids asking."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return None, "not checked: HF_HUB_OFFLINE is set"
    url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/api/models/{model_id}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
            return True, f"{url}: {r.status}"
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable", reported as it is
        return False, " ".join(f"{type(e).__name__}: {e}".split())
