"""What the CPU tests assert on the CPU, asserted on a CUDA device. Skipped where there is none (CI has none);
run on a GPU node with `pytest tests/test_cuda.py` (docs/benchmarks.md, "GPU: the CUDA checks"). The training
tests (tests/test_training.py) need no copy here: `train` runs on CUDA by default where there is one, bf16 on
Ampere and newer; nor does `lock_luma_torch` (tests/test_evaluate.py runs it on CUDA too where there is one)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from imgrestore.models import create_model
from imgrestore.training.data import RestorationDataset, batch_to_device
from imgrestore.training.evaluate import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda", 0)


def test_uint8_batches_convert_on_cuda_exactly_as_on_the_cpu():
    """batch_to_device's level table: every one of the 256 levels as the CPU divides it. A plain division by 255
    in a CUDA kernel (a multiplication by the reciprocal) is a float step off for about half the levels, which
    is why the table exists; the test shows that too, so that a CUDA that stops doing it is noticed."""
    levels = torch.arange(256, dtype=torch.uint8)
    gray = levels.view(1, 1, 16, 16).repeat(2, 1, 1, 1)
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    rgb = levels.view(1, 1, 16, 16).repeat(2, 3, 1, 1).roll(7, dims=-1)
    fill = levels.flip(0).view(1, 1, 16, 16).repeat(2, 1, 1, 1)
    want = [gray.float() / 255, mask.float(), rgb.float() / 255, fill.float() / 255]  # the float path (to_tensors)
    got = batch_to_device([gray, mask, rgb, fill], CUDA)
    assert all(g.device == CUDA and g.dtype == torch.float32 for g in got)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)
    plain = (levels.to(CUDA).float() / 255).cpu()
    assert (plain != levels.float() / 255).sum() > 0


def test_validation_on_cuda_scores_the_same_with_the_torch_and_the_numpy_metric(tiny_dacon):
    """The torch metric on the device (what `metric: auto` picks on a GPU) and the competition's numpy metric,
    on the same CUDA predictions: the same chroma gain chosen, the same scores."""
    f = pd.read_csv(tiny_dacon / "train.csv")
    frame = pd.DataFrame({"name": f["input_img_path"].map(lambda p: p.split("/")[-1]),
                          "input_path": [str(tiny_dacon / p) for p in f["input_img_path"]],
                          "gt_path": [str(tiny_dacon / p) for p in f["gt_img_path"]]})
    dataset = RestorationDataset(frame, 64)
    got = {}
    for metric in ("numpy", "torch"):
        torch.manual_seed(0)
        model = create_model("unet", base_channels=8, depth=2, chroma="regression")
        torch.nn.init.normal_(model.chroma_head[-1].weight, std=0.05)  # colour for the gain to choose among
        got[metric] = evaluate(model.to(CUDA), dataset, CUDA, 30, 2, calibration_images=12, batch_size=8,
                               metric=metric)[0]
    a, b = got["numpy"], got["torch"]
    assert a.keys() == b.keys() and a["chroma_gain"] == b["chroma_gain"]
    for k in a:
        assert abs(a[k] - b[k]) < 1e-9, (k, a[k], b[k])
