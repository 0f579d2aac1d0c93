"""Tests of imgrestore.models: every registered family, at tiny widths and sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imgrestore.models import create_model, list_models, rgb_to_luma, rgb_to_ycbcr, ycbcr_to_rgb
from imgrestore.models.effnet_unet import EfficientNetLite0Encoder, load_lite0_state_dict

torch.set_num_threads(2)

# Tiny configurations, one per family (aliases map to one of these).
TINY = {
    "unet": dict(base_channels=4, depth=2),
    "two_stage_unet": dict(base_channels=4, depth=2),
    "ycbcr_unet": dict(base_channels=4, depth=2),
    "lab_unet": dict(base_channels=4, depth=3, norm="group"),
    "effnet_unet": dict(base_channels=4, depth=5, pretrained=False, max_channels=16),
}


def make_inputs(h: int, w: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gray = torch.rand(batch, 1, h, w, generator=g)
    mask = torch.zeros(batch, 1, h, w)
    mask[:, :, h // 4 : h // 2, w // 3 : (2 * w) // 3] = 1
    gray = gray * (1 - mask) + 0.5 * mask  # the lost region is a constant gray
    return gray, mask


def test_registry_lists_every_family():
    assert set(TINY) <= set(list_models())


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("no_such_model")
    with pytest.raises(ValueError):
        create_model("unet", norm="nope")
    with pytest.raises(ValueError):
        create_model("unet", output="nope")


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 47)])
def test_forward_shape_and_range(name, size):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name])
    gray, mask = make_inputs(*size)
    out = model(gray, mask)
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    model.eval()
    with torch.no_grad():
        out = model(gray, mask)
    assert out.shape == (2, 3, *size) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", sorted(TINY))
def test_gradient_flows(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name])
    gray, mask = make_inputs(32, 32)
    gray.requires_grad_(True)
    target = torch.rand(2, 3, 32, 32)
    loss = F.l1_loss(model(gray, mask), target)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert gray.grad.abs().sum() > 0
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero >= 0.9 * len(list(model.parameters()))


@pytest.mark.parametrize("name", sorted(TINY))
def test_rebuild_from_config(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name])
    config = json.loads(json.dumps(model.config))  # plain data
    clone = create_model(model.name, **config)
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict(), strict=True)
    model.eval(), clone.eval()
    gray, mask = make_inputs(32, 32)
    with torch.no_grad():
        assert torch.equal(model(gray, mask), clone(gray, mask))


def test_two_stage_aux_output():
    torch.manual_seed(0)
    model = create_model("two_stage_unet", **TINY["two_stage_unet"])
    gray, mask = make_inputs(50, 70)
    rgb, gray_inp = model(gray, mask, return_aux=True)
    assert rgb.shape == (2, 3, 50, 70) and gray_inp.shape == (2, 1, 50, 70)
    assert gray_inp.min() >= 0 and gray_inp.max() <= 1
    # Known pixels pass through stage 1 untouched.
    outside = mask == 0
    assert torch.equal(gray_inp[outside], gray[outside])
    # Variants: different inpainting net size, mask fed to the colouriser, sigmoid head.
    model = create_model("two_stage_unet", base_channels=4, depth=2, inpaint_base_channels=6, inpaint_depth=3,
                         colorize_with_mask=True, output="sigmoid")
    assert model(gray, mask).shape == (2, 3, 50, 70)


def test_ycbcr_conversion_is_exact_inverse():
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-12)
    # Pillow's convert("L") on uint8 RGB agrees with rgb_to_luma up to rounding.
    arr = (rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil_l = np.asarray(Image.fromarray(arr).convert("L")).astype(np.float64)
    ours = rgb_to_luma(torch.from_numpy(arr).permute(2, 0, 1)[None].double())[0, 0].numpy()
    assert np.abs(pil_l - ours).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("name", ["ycbcr_unet", "lab_unet"])
def test_ycbcr_keeps_luma_outside_mask(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    with torch.no_grad():  # keep the chroma small so that few pixels clip
        model.body.head.weight.mul_(0.05)
        model.body.head.bias.zero_()
    gray, mask = make_inputs(50, 70)
    gray = 0.15 + 0.7 * gray  # away from 0/1 so clipping is rare
    with torch.no_grad():
        rgb, ycbcr = model(gray, mask, return_ycbcr=True)
    unclamped = ((ycbcr_to_rgb(ycbcr) >= 0) & (ycbcr_to_rgb(ycbcr) <= 1)).all(1, keepdim=True)
    keep = unclamped & (mask == 0)
    assert keep.float().mean() > 0.3
    luma = rgb_to_luma(rgb)
    assert (luma - gray)[keep].abs().max() < 1e-5
    # The same through uint8 and Pillow, as a submission would be written.
    rgb8 = (rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    l8 = np.asarray(Image.fromarray(rgb8).convert("L")).astype(int)
    g8 = (gray[0, 0].numpy() * 255).round().astype(int)
    assert np.abs(l8 - g8)[keep[0, 0].numpy()].max() <= 1
    # Inside the mask the luma is predicted, not copied.
    assert not torch.allclose(luma[mask == 1], gray[mask == 1])


def test_effnet_pretrained_loads_strictly_and_changes_output():
    sd = load_lite0_state_dict()
    torch.manual_seed(0)
    pre = create_model("effnet_unet", base_channels=4, max_channels=16, pretrained=True)
    torch.manual_seed(0)
    scratch = create_model("effnet_unet", base_channels=4, max_channels=16, pretrained=False)
    enc_sd = pre.encoder.state_dict()
    assert len(enc_sd) > 200
    for k, v in enc_sd.items():
        assert torch.equal(v, sd[k]), k
    # Only the classifier head of the checkpoint is left unused at depth 5.
    unused = set(sd) - set(enc_sd)
    assert unused and all(k.startswith(("_conv_head.", "_bn1.", "_fc.")) for k in unused)
    pre.eval(), scratch.eval()
    gray, mask = make_inputs(64, 64)
    with torch.no_grad():
        assert not torch.allclose(pre(gray, mask), scratch(gray, mask))
    # Shallower encoders load the matching prefix of the blocks.
    shallow = create_model("effnet_unet", base_channels=4, depth=3, max_channels=16, pretrained=True)
    assert len(shallow.encoder._blocks) == 5
    assert shallow(gray, mask).shape == (2, 3, 64, 64)


def test_effnet_checkpoint_mismatch_raises():
    sd = load_lite0_state_dict()
    enc = EfficientNetLite0Encoder(5)
    broken = dict(sd)
    broken.pop("_blocks.3._bn1.running_var")
    with pytest.raises(RuntimeError, match="missing keys"):
        enc.load_pretrained(broken)
    broken = dict(sd, **{"_blocks.2.extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="unexpected keys"):
        enc.load_pretrained(broken)
    broken = dict(sd, **{"_conv_stem.weight": torch.zeros(32, 4, 3, 3)})
    with pytest.raises(RuntimeError, match="shape mismatches"):
        enc.load_pretrained(broken)


def test_effnet_encoder_is_a_working_imagenet_backbone():
    """Encoder + the checkpoint's classifier head recognise a cat: architecture,
    TF padding and input normalisation all match the weights."""
    from skimage import data, transform

    sd = load_lite0_state_dict()
    model = create_model("effnet_unet", base_channels=4, max_channels=16, pretrained=True).eval()
    img = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - model.mean) / model.std
    with torch.no_grad():
        f = model.encoder(x)[-1]
        h = F.conv2d(f, sd["_conv_head.weight"])
        h = F.batch_norm(h, sd["_bn1.running_mean"], sd["_bn1.running_var"], sd["_bn1.weight"], sd["_bn1.bias"],
                         False, 0.0, 1e-3)
        logits = F.linear(F.relu6(h).mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    assert int(logits.argmax()) in range(281, 286)  # ImageNet cat classes


def test_fill_hole_keeps_known_pixels_and_fills_smoothly():
    from imgrestore.models.layers import fill_hole

    h, w = 40, 60
    ramp = torch.linspace(0, 1, w).expand(1, 1, h, w).clone()
    mask = torch.zeros(1, 1, h, w)
    mask[..., 10:30, 20:40] = 1
    damaged = ramp * (1 - mask) + 0.02 * mask  # the flat fill value
    filled = fill_hole(damaged, mask)
    assert torch.equal(filled[mask == 0], damaged[mask == 0])
    hole = filled[0, 0, 10:30, 20:40]
    assert float((hole - ramp[0, 0, 10:30, 20:40]).abs().max()) < 0.15  # close to the hidden ramp
    assert float(hole[:, -1].mean()) > float(hole[:, 0].mean())  # and it rises left to right like it
    flat = fill_hole(torch.full((1, 1, h, w), 0.3) * (1 - mask), mask)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))
