"""Tests of imgrestore.losses against the real metric implementations (skimage, OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data, transform
from skimage.metrics import structural_similarity

from imgrestore.losses import (
    build_loss,
    hist_correlation,
    hue_hist_loss,
    list_losses,
    masked_ssim_loss,
    opencv_hue,
    soft_hue_histogram,
    ssim,
    ssim_loss,
)

torch.set_num_threads(2)


def to_u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    return [to_u8(transform.resize(getattr(data, n)(), (48, 48), anti_aliasing=True)) for n in names]


def cv_hue_corr(a: np.ndarray, b: np.ndarray) -> float:
    def hist(x):
        h = cv2.calcHist([cv2.cvtColor(x, cv2.COLOR_RGB2HSV)], [0], None, [180], [0, 180])
        return cv2.normalize(h, h).flatten()

    return cv2.compareHist(hist(a), hist(b), cv2.HISTCMP_CORREL)


def hue_shift(a: np.ndarray, d: int) -> np.ndarray:
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV).astype(int)
    hsv[..., 0] = (hsv[..., 0] + d) % 180
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


# --------------------------------------------------------------------------- builder


def test_build_loss_total_is_weighted_sum():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    spec = {"l1": 1.0, "mse": 0.5, "ssim": 0.2, "hue_hist": 0.1, "masked_l1": 2.0, "masked_ssim": 0.3,
            "masked_mse": 0.0}
    loss_fn = build_loss(spec)
    total, parts = loss_fn(pred, target, mask)
    assert set(parts) == {k for k, w in spec.items() if w}  # zero weights are skipped
    expected = sum(spec[k] * v for k, v in parts.items())
    assert torch.allclose(total, expected)
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert set(list_losses()) >= set(spec)


def test_build_loss_options_and_errors():
    loss_fn = build_loss({"hue_hist": {"weight": 0.5, "bandwidth": 2.0, "kernel": "gaussian"}})
    assert loss_fn.weights == {"hue_hist": 0.5}
    x = torch.rand(1, 3, 16, 16)
    total, parts = loss_fn(x, x, torch.ones(1, 1, 16, 16))
    assert abs(float(total)) < 1e-5
    with pytest.raises(KeyError, match="unknown loss"):
        build_loss({"nope": 1.0})
    with pytest.raises(ValueError):
        build_loss({"l1": 0.0})


def test_masked_pixel_losses_only_see_the_mask():
    target = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1
    pred = target.clone()
    pred[..., 8:, :] += 0.3  # error outside the mask only
    _, parts = build_loss({"l1": 1, "masked_l1": 1, "masked_mse": 1})(pred, target, mask)
    assert parts["l1"] > 0 and parts["masked_l1"] == 0 and parts["masked_mse"] == 0
    pred = target.clone()
    pred[..., :8, :] += 0.2
    _, parts = build_loss({"masked_l1": 1})(pred, target, mask)
    assert torch.isclose(parts["masked_l1"], torch.tensor(0.2), atol=1e-6)


# --------------------------------------------------------------------------- SSIM


def test_ssim_matches_skimage(photos):
    rng = np.random.default_rng(0)
    for a, b in [(photos[0], photos[1]), (photos[2], to_u8(photos[2] / 255 + rng.normal(0, 0.05, photos[2].shape)))]:
        ref = structural_similarity(a / 255.0, b / 255.0, channel_axis=-1, data_range=1.0)
        assert abs(ssim(to_t(a), to_t(b)).item() - ref) < 1e-6
    x = to_t(photos[0]).float()
    assert ssim_loss(x, x).abs() < 1e-6
    # The Gaussian window is also available and agrees in spirit.
    g = ssim(to_t(photos[0]), to_t(photos[1]), window="gaussian", window_size=11).item()
    assert abs(g - structural_similarity(photos[0] / 255.0, photos[1] / 255.0, channel_axis=-1, data_range=1.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)) < 1e-6


def test_masked_ssim_ignores_far_pixels():
    torch.manual_seed(0)
    target = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:12, 4:12] = 1
    pred = target.clone()
    pred[..., 20:, 20:] = 0.0  # far from the mask (more than the 3-px window radius)
    assert masked_ssim_loss(pred, target, mask).abs() < 1e-6
    pred[..., 6:10, 6:10] = 0.0
    assert masked_ssim_loss(pred, target, mask) > 0.05
    assert masked_ssim_loss(pred, target, torch.zeros_like(mask)) == 0  # empty mask contributes 0


# --------------------------------------------------------------------------- hue histogram


def test_opencv_hue_matches_cv2(photos):
    for a in photos:
        hue, chroma = opencv_hue(to_t(a))
        ref = cv2.cvtColor(a, cv2.COLOR_RGB2HSV)[..., 0].astype(int)
        ours = np.round(hue[0].numpy()).astype(int) % 180
        diff = np.minimum(np.abs(ours - ref), 180 - np.abs(ours - ref))
        assert diff.max() <= 1
        assert (diff == 0).mean() > 0.97
        assert np.all(ref[chroma[0].numpy() == 0] == 0)


def test_soft_histogram_close_to_cv2_histogram(photos):
    for a in photos:
        hard = cv2.calcHist([cv2.cvtColor(a, cv2.COLOR_RGB2HSV)], [0], None, [180], [0, 180]).flatten()
        for kernel, min_corr in [("triangular", 0.99), ("gaussian", 0.9)]:
            soft = soft_hue_histogram(to_t(a), kernel=kernel)[0].numpy()
            assert np.isclose(soft.sum(), hard.sum())  # every pixel counted once, gray ones in bin 0
            assert np.corrcoef(soft, hard)[0, 1] > min_corr
    gray = np.repeat(photos[0][..., :1], 3, axis=2)
    soft = soft_hue_histogram(to_t(gray))[0]
    assert soft[0] == gray.shape[0] * gray.shape[1] and soft[1:].sum() == 0


def test_hue_loss_tracks_the_real_metric(photos):
    rng = np.random.default_rng(0)
    pairs = []
    for i, a in enumerate(photos):
        pairs += [(a, hue_shift(a, d)) for d in (1, 4, 15)]
        pairs.append((a, np.repeat(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)))
        pairs.append((a, to_u8(a / 255 + rng.normal(0, 0.03, a.shape))))
        pairs.append((a, photos[(i + 1) % len(photos)]))
    real = np.array([1 - cv_hue_corr(a, b) for a, b in pairs])

    def ranks(v):
        return np.argsort(np.argsort(v))

    # (kernel, bandwidth, max |soft - real|): the faithful one and the default (smoother) one.
    for kernel, bandwidth, tol in [("triangular", 1.0, 0.1), ("gaussian", 1.0, 0.3)]:
        soft = np.array([hue_hist_loss(to_t(a), to_t(b), kernel=kernel, bandwidth=bandwidth).item()
                         for a, b in pairs])
        assert np.abs(real - soft).max() < tol, kernel
        assert np.corrcoef(ranks(real), ranks(soft))[0, 1] > 0.95, kernel
    for a in photos:  # identical images: zero loss
        assert hue_hist_loss(to_t(a), to_t(a)).item() < 1e-6


@pytest.mark.parametrize("kernel,bandwidth", [("triangular", 1.0), ("triangular", 2.5), ("gaussian", 1.0)])
def test_hue_loss_gradients(photos, kernel, bandwidth):
    target = to_t(photos[0]).float()
    # A wrong-colour prediction, and a nearly gray one (a colouriser's starting point).
    gray = target.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    for start in (target.flip(1) * 0.8 + 0.1, gray + 0.02 * (target - gray)):
        pred = start.clone().requires_grad_(True)
        loss = hue_hist_loss(pred, target, kernel=kernel, bandwidth=bandwidth)
        loss.backward()
        assert torch.isfinite(loss) and loss > 0.01
        assert torch.isfinite(pred.grad).all()
        assert pred.grad.abs().sum() > 0
    # Exactly gray pixels sit on a kink of max - min: finite (here zero) gradient, no NaN.
    pred = gray.clone().requires_grad_(True)
    hue_hist_loss(pred, target, kernel=kernel, bandwidth=bandwidth).backward()
    assert torch.isfinite(pred.grad).all()
    # Gradient steps from a hue-shifted image lower the loss and the real metric's 1 - correlation.
    start = to_t(hue_shift(photos[0], 4)).float()
    pred = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([pred], lr=0.003)
    for _ in range(15):
        opt.zero_grad()
        loss = hue_hist_loss(pred.clamp(0, 1), target, kernel=kernel, bandwidth=bandwidth)
        loss.backward()
        opt.step()
    before = hue_hist_loss(start, target, kernel=kernel, bandwidth=bandwidth).item()
    assert hue_hist_loss(pred.detach().clamp(0, 1), target, kernel=kernel, bandwidth=bandwidth).item() < 0.6 * before
    pred8 = (pred.detach().clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert 1 - cv_hue_corr(photos[0], pred8) < 1 - cv_hue_corr(photos[0], hue_shift(photos[0], 4))


def test_hist_correlation_matches_cv2():
    rng = np.random.default_rng(1)
    a, b = rng.random(180).astype(np.float32), rng.random(180).astype(np.float32)
    ours = hist_correlation(torch.from_numpy(a)[None], torch.from_numpy(b)[None]).item()
    assert abs(ours - cv2.compareHist(a, b, cv2.HISTCMP_CORREL)) < 1e-5
