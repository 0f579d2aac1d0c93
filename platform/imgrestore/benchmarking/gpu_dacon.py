"""What the GPU benchmark's training rows (``gpu_training``) train: the configurations of
search_spaces/dacon.yaml, a synthetic 512 px DACON-format set, and a trainer that is the training loop's step."""
from __future__ import annotations

import atexit
import gc
import itertools
import shutil
import tempfile
import time
from pathlib import Path

from imgrestore.benchmarking.gpu import NO_GPU, cuda_available, missing, row, sync

# What a trial of search_spaces/dacon.yaml costs on this node, through the project's own code paths: the models of
# imgrestore.models, the loss of imgrestore.losses, the autocast dtype of imgrestore.training.loop, the datasets of
# imgrestore.training.data, imgrestore.training.evaluate, imgrestore.preprocess and imgrestore.tuning.search. The
# images are a synthetic DACON-format set (imgrestore.data.build on the bundled photos), built once per process in
# a temporary folder. Without --quick these rows measure on a GPU only; --quick runs them tiny (64 px, a couple of
# steps, a few images) on whatever device there is, fp32 on a CPU, so that a CPU test exercises every path.

TRAIN_NAME = "training throughput / peak memory"
DATA_WAIT_NAME = "data-wait share"
VALIDATION_NAME = "validation time per epoch"
SEARCH_NAME = "two-trial search"
LIMIT_GIB = 24.0  # the question these rows answer: does every dacon.yaml trial fit on a 24 GB card?
DACON_YAML = Path(__file__).resolve().parents[3] / "search_spaces" / "dacon.yaml"
_DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "quniform", "qloguniform")  # as tuning.space
QUICK = {"size": 64, "batch_size": 2, "warmup": 1, "steps": 1, "val_images": 2, "search_val_images": 4}
FULL = {"warmup": 2, "steps": 5, "wait_steps": 20, "search_val_images": 16, "cpu_val_images": 24}
ADVISED_GPU_NODE_CPUS = 8  # dacon.yaml / docs/cluster.md: `cpu: 8` per trial on H100-class nodes
_SETS: dict = {}


def is_dist(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _DISTRIBUTIONS


def heaviest(value):
    """A searched value made constant at its most expensive: the highest number a distribution allows (every
    loss term on, at its largest weight; the most extra damage), the first option of a non-numeric choice."""
    if is_dist(value):
        kind, args = next(iter(value.items()))
        if kind == "choice":
            numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            return max(numbers) if len(numbers) == len(args) else list(args)[0]
        return int(args[1]) - 1 if kind == "randint" else float(args[1])
    if isinstance(value, dict):
        return {k: heaviest(v) for k, v in value.items()}
    return value


def _dacon_space() -> tuple[dict, dict, str]:
    """search_spaces/dacon.yaml's trial config (distributions included), its per-trial resources, and how it
    was read."""
    try:
        from imgrestore.tuning.space import load_space
    except ImportError:  # load_space imports ray.tune: without ray, the same file read as plain YAML
        import yaml

        raw = yaml.safe_load(DACON_YAML.read_text())
        return raw["config"], raw.get("resources") or {}, "dacon.yaml read as YAML (no ray here)"
    space = load_space(DACON_YAML)
    return space.config, space.resources, "dacon.yaml via tuning.space.load_space"


def dacon_config() -> tuple[dict, str]:
    """search_spaces/dacon.yaml's trial config (distributions included) and how it was read."""
    config, _, how = _dacon_space()
    return config, how


def trial_cpus() -> int:
    """The CPUs a dacon.yaml trial asks Ray for (its `resources: {cpu: N}`)."""
    return int(_dacon_space()[1].get("cpu", 1))


def trial_workers(num_workers, cpus: int) -> int:
    """DataLoader workers of a dacon.yaml trial given `cpus`: its num_workers, "auto" resolved as inside the
    trial (its resources.cpu minus one), not from this process's CPUs."""
    from imgrestore.training.loop import loader_workers

    return max(0, cpus - 1) if num_workers == "auto" else loader_workers(num_workers)


def model_grid(config: dict) -> list[dict]:
    """Every combination of the model choices in `config` (family x width x depth x chroma head for dacon.yaml),
    as create_model configs; a non-choice distribution is taken at its most expensive."""
    axes = {k: (list(v["choice"]) if is_dist(v) and "choice" in v else [heaviest(v)])
            for k, v in config["model"].items()}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def families(grid: list[dict]) -> list[str]:
    return list(dict.fromkeys(m["name"] for m in grid))


def _size_key(m: dict) -> tuple:
    return int(m.get("base_channels", 0)), int(m.get("depth", 0))


def smallest(grid: list[dict], family: str) -> dict:
    """The family's cheapest configuration (fewest channels, shallowest, regression head when there is one)."""
    return min((m for m in grid if m["name"] == family), key=lambda m: (_size_key(m), m.get("chroma") != "regression"))


def one_per_family(grid: list[dict]) -> list[dict]:
    """--quick: each family's smallest configuration, the chroma heads taken in turn (both code paths run)."""
    heads = list(dict.fromkeys(m.get("chroma") for m in grid))
    out = []
    for i, family in enumerate(families(grid)):
        mine = [m for m in grid if m["name"] == family]
        low = [m for m in mine if _size_key(m) == min(_size_key(x) for x in mine)]
        out.append(next((m for m in low if m.get("chroma") == heads[i % len(heads)]), low[0]))
    return out


def config_label(m: dict) -> str:
    head = {"regression": "reg", "classification": "cls"}.get(m.get("chroma", "regression"), m.get("chroma"))
    return f"{head} w{m.get('base_channels', '?')} d{m.get('depth', '?')}"


def dtype_name(dtype) -> str:
    return "fp32" if dtype is None else {"bfloat16": "bf16", "float16": "fp16"}.get(str(dtype).replace("torch.", ""),
                                                                                    str(dtype))


def device_text(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def synthetic_set(quick: bool) -> tuple[Path, float]:
    """(folder, seconds to build) of the synthetic DACON-format set the training rows share: 512 px crops of the
    bundled photos with generated damage (64 px with --quick), built once per process in a temporary folder
    that is removed at exit."""
    if quick not in _SETS:
        from imgrestore.data.build import BuildConfig, build_dataset
        from imgrestore.data.embedded import bundled_photos

        cfg = BuildConfig(size=QUICK["size"], n_train=30, n_test=6, seed=1) if quick else \
            BuildConfig(size=512, n_train=416, n_test=32, seed=0)
        tmp = tempfile.mkdtemp(prefix="imgrestore-doctor-")
        atexit.register(shutil.rmtree, tmp, True)
        print(f"  building a synthetic {cfg.size} px DACON-format set ({cfg.n_train} train + {cfg.n_test} test) "
              "...", flush=True)
        t = time.perf_counter()
        root = build_dataset(bundled_photos(), Path(tmp) / f"synthetic-{cfg.size}px", cfg, progress=False)
        _SETS[quick] = (root, time.perf_counter() - t)
    return _SETS[quick]


def train_frame_of(root: Path):
    """train.csv of a DACON folder as the frame RestorationDataset reads (name, input_path, gt_path)."""
    import pandas as pd

    f = pd.read_csv(root / "train.csv")
    return pd.DataFrame({"name": [Path(p).name for p in f["input_img_path"]],
                         "input_path": [str(root / p) for p in f["input_img_path"]],
                         "gt_path": [str(root / p) for p in f["gt_img_path"]]})


def _setting(quick: bool, config: dict) -> dict:
    """Image size and batch size: dacon.yaml's (512, 8), or the --quick ones."""
    if quick:
        return {"size": QUICK["size"], "batch_size": QUICK["batch_size"]}
    cfg = heaviest(config)
    return {"size": int(cfg.get("image_size") or 512), "batch_size": int(cfg.get("batch_size", 8))}


class Trainer:
    """One model with its loss, AdamW, learning-rate schedule and GradScaler, set up as
    imgrestore.training.loop.train sets them up (`cfg`: a full training config, loop.with_defaults)."""

    def __init__(self, model_cfg: dict, cfg: dict, device, amp: str, total_steps: int, class_weights=None):
        import torch

        from imgrestore.losses import build_loss
        from imgrestore.models import create_model
        from imgrestore.training.loop import autocast_dtype, lr_lambda

        self.cfg, self.device = cfg, device
        self.amp_dtype = autocast_dtype(amp, device)
        self.autocast = {"device_type": device.type, "dtype": self.amp_dtype or torch.float32,
                         "enabled": self.amp_dtype is not None}
        kwargs = dict(model_cfg)
        name = kwargs.pop("name")
        if name == "effnet_unet":
            kwargs["pretrained"] = False  # same architecture and cost; the ImageNet weights are not needed here
        self.model = create_model(name, **kwargs).to(device)
        self.model.train()
        self.loss_fn = build_loss(cfg["loss"])
        self.bins = getattr(self.model, "bins", None)
        self.class_weights = class_weights(self.bins) if self.bins is not None and class_weights else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(total_steps, cfg["warmup_frac"]))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    def step(self, *batch) -> float:
        """One training step on a CPU batch (gray, mask, rgb[, filled]: see loop.train_loader), the training
        loop's own (imgrestore.training.loop.train_step), after the same copy to the device; returns the loss."""
        from imgrestore.training.data import batch_to_device
        from imgrestore.training.loop import train_step

        gray, mask, rgb, *filled = batch_to_device(batch, self.device)
        loss, parts = train_step(self.model, gray, mask, rgb, self.cfg, self.loss_fn, self.optimizer, self.scaler,
                                 self.scheduler, self.autocast, self.bins, self.class_weights,
                                 filled=filled[0] if filled else None)
        for v in parts.values():  # the loop reads every part back (float(v)) for its epoch means
            float(v)
        return loss.item()


def _training_parts(quick: bool):
    """What (d)-(f) share: dacon.yaml's config, its most expensive training config per model, the dataset."""
    from imgrestore.training.loop import chroma_class_weights, with_defaults

    config, how = dacon_config()
    setting = _setting(quick, config)
    base = heaviest(config)

    def training_cfg(model_cfg: dict) -> dict:
        return with_defaults({**base, "model": model_cfg, "image_size": setting["size"],
                              "batch_size": setting["batch_size"]})

    root, build_s = synthetic_set(quick)
    frame = train_frame_of(root)
    cache: dict = {}

    def class_weights(cfg: dict):
        """loop.train's chroma-class rebalancing weights (from 16 training truths: the values do not change
        the cost), for chroma="classification" with chroma_rebalance > 0, else None."""
        if not cfg["chroma_rebalance"]:
            return None

        def weights(bins):
            if bins.n not in cache:
                from imgrestore.training.data import RestorationDataset

                cache[bins.n] = chroma_class_weights(RestorationDataset(frame, setting["size"]), bins,
                                                     cfg["chroma_rebalance"], max_images=16)
            return cache[bins.n]

        return weights

    return config, how, setting, training_cfg, frame, class_weights, build_s


def clear_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_training(model_cfg, cfg, device, amp, batches, warmup, steps, class_weights) -> dict:
    """images/s over `steps` timed steps after `warmup` ones (cycling over preloaded CPU batches: no data
    wait), and on a GPU the peak memory of the whole run (optimizer state included)."""
    import torch

    gpu = device.type == "cuda"
    clear_gpu()
    trainer = Trainer(model_cfg, cfg, device, amp, warmup + steps, class_weights)
    for i in range(warmup):
        trainer.step(*batches[i % len(batches)])
    sync()
    t = time.perf_counter()
    for i in range(steps):
        trainer.step(*batches[(warmup + i) % len(batches)])
    sync()
    sec = time.perf_counter() - t
    out = {"images_per_s": steps * batches[0][0].shape[0] / sec, "step_ms": 1000 * sec / steps,
           "dtype": dtype_name(trainer.amp_dtype)}
    if gpu:
        out.update(peak=torch.cuda.max_memory_allocated() / 2**30, reserved=torch.cuda.max_memory_reserved() / 2**30)
    return out


def batches_of(dataset, batch_size: int, n_batches: int, pin: bool, prefill: tuple | None = None) -> list:
    """Preloaded CPU batches; with `prefill` (method, radius) each carries its classical fill, as the training
    loader's batches do (loop.train_loader: the fill is computed in its workers, not in the step)."""
    import torch

    from imgrestore.models.prefill import CPU_PREFILLS, PrefillCollate

    out = []
    for b in range(n_batches):
        items = [dataset[(b * batch_size + j) % len(dataset)] for j in range(batch_size)]
        if prefill and prefill[0] in CPU_PREFILLS:
            batch = list(PrefillCollate(*prefill)(items))
        else:
            batch = [torch.stack(t) for t in zip(*items)]
        out.append([t.pin_memory() for t in batch] if pin else batch)
    return out


def prefill_of(cfg: dict) -> tuple:
    """(method, radius) of a training config's model (the Restorer's defaults: telea, 5)."""
    return str(cfg["model"].get("prefill", "telea")), int(cfg["model"].get("prefill_radius", 5))


def training_start(name: str, quick: bool):
    """What (d)-(f) start with: on a CPU without --quick, or without torch or the synthetic set, the row that
    says so (a list: return it); else (gpu, device, _training_parts(quick))."""
    gpu = cuda_available()
    if not gpu and not quick:
        return [row(name, NO_GPU, "on a CPU, --quick measures a tiny fp32 version")]
    try:
        import torch

        parts = _training_parts(quick)
    except Exception as e:
        return [row(name, missing(e))]
    return gpu, torch.device("cuda" if gpu else "cpu"), parts
