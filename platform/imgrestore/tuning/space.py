"""Search spaces as plain YAML.

    name: demo
    metric: score                 # reported by every trial; mode: max
    num_samples: 6
    max_concurrent_trials: 2
    search: {algorithm: optuna}   # optuna | random
    scheduler: {name: asha, grace_period: 2, reduction_factor: 2}   # asha | fifo
    resources: {cpu: 1, gpu: 0}   # per trial; workers: N > 1 runs it as a Ray Train TorchTrainer (DDP)
    max_failures: 2               # a crashed trial restarts from its last checkpoint
    config:                       # the trial config (imgrestore.training.loop.DEFAULTS)
      model:
        name: {choice: [unet, two_stage_unet]}
        base_channels: {choice: [8, 16]}
      lr: {loguniform: [3.0e-4, 3.0e-3]}
      epochs: 4

Inside `config` a value is a constant, a nested mapping, or one distribution: a mapping with the single key
choice | uniform | loguniform | randint | quniform | qloguniform (Ray Tune's names).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from ray import tune

DISTRIBUTIONS = {
    "choice": lambda v: tune.choice(list(v)),
    "uniform": lambda v: tune.uniform(*map(float, v)),
    "loguniform": lambda v: tune.loguniform(*map(float, v)),
    "randint": lambda v: tune.randint(*map(int, v)),
    "quniform": lambda v: tune.quniform(*map(float, v)),
    "qloguniform": lambda v: tune.qloguniform(*map(float, v)),
}
TOP_LEVEL = {"name", "metric", "mode", "num_samples", "max_concurrent_trials", "search", "scheduler",
             "resources", "max_failures", "config", "description"}


@dataclass
class SearchSpace:
    name: str
    config: dict
    metric: str = "score"
    mode: str = "max"
    num_samples: int = 4
    max_concurrent_trials: int | None = None
    search: dict = field(default_factory=lambda: {"algorithm": "random"})
    scheduler: dict = field(default_factory=lambda: {"name": "fifo"})
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_failures: int = 2
    description: str = ""
    source: str = ""

    def param_space(self) -> dict:
        """The trial config with every distribution turned into a Ray Tune sampler."""
        return to_tune(self.config, "config")


def to_tune(value, where: str):
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
            kind, args = next(iter(value.items()))
            if not isinstance(args, (list, tuple)) or not args:
                raise ValueError(f"{where}: '{kind}' needs a list, got {args!r}")
            try:
                return DISTRIBUTIONS[kind](args)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: bad '{kind}' arguments {args!r}: {e}") from None
        return {k: to_tune(v, f"{where}.{k}") for k, v in value.items()}
    return value


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and check a search-space YAML; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: search space not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or "config" not in raw:
        raise ValueError(f"{path}: a search space is a mapping with at least a 'config' key")
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(TOP_LEVEL)}")
    from imgrestore.training.loop import DEFAULTS  # the trial config's keys

    bad = set(raw["config"]) - set(DEFAULTS)
    if bad:
        raise ValueError(f"{path}: config has unknown keys {sorted(bad)}; known: {sorted(DEFAULTS)}")
    if raw.get("mode", "max") not in ("max", "min"):
        raise ValueError(f"{path}: mode must be 'max' or 'min'")
    rest = {k: v for k, v in raw.items() if k not in ("config", "name")}
    space = SearchSpace(name=str(raw.get("name") or path.stem), config=raw["config"], source=str(path), **rest)
    try:
        space.param_space()  # fail now, with the key's path, on a malformed distribution
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return space


def corner_configs(value, limit: int = 64) -> list:
    """A few concrete configs that together touch every choice and both ends of every range of `value`
    (a space's `config`): the i-th config takes option i of each choice (cycling) and alternates low/high."""
    def pick(v, i):
        if isinstance(v, dict):
            if len(v) == 1 and next(iter(v)) in DISTRIBUTIONS:
                kind, args = next(iter(v.items()))
                if kind == "choice":
                    return list(args)[i % len(args)]
                low, high = args[0], args[1]
                return (int(low) if kind == "randint" else float(low)) if i % 2 == 0 else \
                    (int(high) - 1 if kind == "randint" else float(high))
            return {k: pick(x, i) for k, x in v.items()}
        return v

    def widest(v):
        if isinstance(v, dict):
            if len(v) == 1 and next(iter(v)) in DISTRIBUTIONS:
                kind, args = next(iter(v.items()))
                return len(args) if kind == "choice" else 2
            return max([widest(x) for x in v.values()] or [1])
        return 1

    return [pick(value, i) for i in range(min(limit, widest(value)))]


def check_space(space: SearchSpace) -> None:
    """Fail on the driver, before Ray starts, on what would otherwise crash every trial: unknown model
    names or arguments, unknown losses, bad training settings, a searched validation setting."""
    from imgrestore.losses import build_loss
    from imgrestore.models import create_model
    from imgrestore.training.loop import with_defaults
    from imgrestore.tuning.baselines import validation_config

    where = space.source or space.name
    if int(space.num_samples) < 1:
        raise ValueError(f"{where}: num_samples must be >= 1, got {space.num_samples}")
    try:
        validation_config(space.config)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    for key, what in (("learned_margin", "how much a trial must beat the best classical restorer by on validation"),
                      ("learned_sem", "how many standard errors of its per-image advantage a trial must clear")):
        value = space.config.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{where}: config.{key} must be a constant number >= 0 ({what}), got {value!r}")
    built = set()
    for cfg in corner_configs(space.config):
        try:
            with_defaults(cfg)
            build_loss(cfg.get("loss", {"l1": 1.0}))
            model = dict(cfg.get("model", {"name": "unet"}))
            key = json.dumps(model, sort_keys=True, default=str)
            if key not in built:  # building checks every argument (pretrained weights stay unloaded)
                name = model.pop("name")
                create_model(name, **{**model, **({"pretrained": False} if "pretrained" in model or
                                                  name == "effnet_unet" else {})})
                built.add(key)
        except (KeyError, ValueError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ValueError(f"{where}: a trial config would fail: {msg}") from None
