"""Tests of imgrestore.losses against the real metric implementations (skimage, OpenCV)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage import data, transform
from skimage.metrics import structural_similarity

from imgrestore.data.damage import apply_damage, to_gray
from imgrestore.data.embedded import demo_photo
from imgrestore.losses import (
    build_loss,
    hist_correlation,
    hue_hist_loss,
    list_losses,
    masked_ssim_1d,
    masked_ssim_loss,
    metric_loss,
    opencv_hue,
    resolve_data_range,
    soft_hue_histogram,
    ssim,
    ssim_loss,
)
from imgrestore.metrics import score_image

torch.set_num_threads(2)


def to_u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    return [to_u8(transform.resize(getattr(data, n)(), (48, 48), anti_aliasing=True)) for n in names]


def to_batch(arrays: list[np.ndarray], dtype=torch.float64) -> torch.Tensor:
    return torch.cat([to_t(a) for a in arrays]).to(dtype)


def mask_batch(masks: list[np.ndarray], dtype=torch.float64) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(m, dtype=np.float64)) for m in masks])[:, None].to(dtype)


def gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def real_scores(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict:
    with warnings.catch_warnings():  # the < 7-pixel fallback warns
        warnings.simplefilter("ignore")
        return score_image(gt, pred, mask)


@pytest.fixture(scope="module")
def damaged() -> list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
    """(truth, realistic damage masks, predictions) for a few photos; one non-square."""
    rng = np.random.default_rng(236420)
    sources = [(demo_photo(0), (96, 96)), (data.astronaut(), (64, 64)), (data.coffee(), (56, 80))]
    out = []
    for img, size in sources:
        gt = to_u8(transform.resize(img, size, anti_aliasing=True))
        inputs = [apply_damage(gt, rng) for _ in range(3)]
        preds = [
            to_u8(gt / 255 + rng.normal(0, 0.08, gt.shape)),  # truth + noise
            to_u8(ndi.uniform_filter(gt / 255, size=(5, 5, 1))),  # blurred truth
            gray_rgb(inputs[0].gray),  # the damaged gray input as RGB
            to_u8(0.5 + 0.05 * (gt / 255 - 0.5)),  # low contrast: a small data_range
            np.full_like(gt, 77),  # flat: data_range 0 -> 1
        ]
        out.append((gt, [d.mask for d in inputs], preds))
    return out


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
            "masked_mse": 0.0, "metric_m": 0.4, "metric": 0.1}
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


# --------------------------------------------------------------------------- the metric's S and M


def test_ssim_and_masked_ssim_1d_match_the_metric(damaged):
    # Every (mask, prediction) pair of a photo in one batch: masks of different sizes side by side.
    worst = {(k, dt): 0.0 for k in ("S", "M") for dt in ("float64", "float32")}
    for gt, masks, preds in damaged:
        pairs = [(m, p) for m in masks for p in preds]
        real = [real_scores(gt, p, m) for m, p in pairs]
        for dt in (torch.float64, torch.float32):
            x, y = to_batch([p for _, p in pairs], dt), to_batch([gt] * len(pairs), dt)
            mask = mask_batch([m for m, _ in pairs], dt)
            s = ssim(x, y, data_range="pred")
            m = masked_ssim_1d(x, y, mask, data_range="pred")
            assert s.shape == m.shape == (len(pairs),)
            flat = torch.tensor([p.min() == p.max() for _, p in pairs])
            for key, ours in (("S", s), ("M", m)):
                ref = torch.tensor([r["ssim" if key == "S" else "masked_ssim"] for r in real], dtype=torch.float64)
                err = (ours.double() - ref).abs()
                if dt == torch.float32:  # a flat prediction's C2 ~ 1e-8 is below float32 rounding
                    err = err[~flat]
                worst[key, str(dt)[6:]] = max(worst[key, str(dt)[6:]], err.max().item())
    assert worst["S", "float64"] < 1e-10 and worst["M", "float64"] < 1e-10, worst
    assert worst["S", "float32"] < 1e-4 and worst["M", "float32"] < 1e-4, worst


def test_registered_losses_are_one_minus_the_metric(damaged):
    gt, masks, preds = damaged[0]
    x, y, mask = to_batch(preds[:3]), to_batch([gt] * 3), mask_batch(masks)
    real = [real_scores(gt, p, m) for p, m in zip(preds[:3], masks)]
    _, parts = build_loss({"ssim": {"weight": 0.2, "data_range": "pred"},
                           "metric_m": {"weight": 0.4, "data_range": "pred"}})(x, y, mask)
    assert abs(parts["ssim"].item() - (1 - np.mean([r["ssim"] for r in real]))) < 1e-10
    assert abs(parts["metric_m"].item() - (1 - np.mean([r["masked_ssim"] for r in real]))) < 1e-10
    # metric = 1 - (0.2 S + 0.4 M + 0.4 C_soft): exact S and M, the soft hue correlation for C.
    c_soft = 1 - hue_hist_loss(x, y, kernel="triangular")
    expected = 1 - np.mean([0.2 * r["ssim"] + 0.4 * r["masked_ssim"] for r in real]) - 0.4 * c_soft.item()
    got = metric_loss(x, y, mask, kernel="triangular").item()
    assert abs(got - expected) < 1e-10
    assert abs(got - (1 - np.mean([r["score"] for r in real]))) < 0.4 * 0.1  # soft C within 0.1 of C
    # data_range: 1.0 (training default) is "pred" for a prediction spanning [0, 1]; bad strings raise.
    full = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    full[:, :, 0, 0], full[:, :, 0, 1] = 0, 1
    assert torch.allclose(ssim(full, full.flip(-1), data_range="pred"), ssim(full, full.flip(-1)))
    assert torch.equal(resolve_data_range("pred", torch.full((1, 3, 4, 4), 0.3)), torch.tensor([1 / 255]))
    with pytest.raises(ValueError, match="data_range"):
        ssim(full, full, data_range="gt")


def test_masked_ssim_1d_few_pixels_falls_back_to_whole_image():
    rng = np.random.default_rng(3)
    gt = to_u8(transform.resize(data.astronaut(), (32, 32), anti_aliasing=True))
    pred = to_u8(gt / 255 + rng.normal(0, 0.1, gt.shape))
    masks = []
    for n in (0, 3, 6, 7, 8):  # scattered pixels, so the 1-D list mixes rows
        m = np.zeros((32, 32), bool)
        m.flat[rng.choice(32 * 32, n, replace=False)] = True
        masks.append(m)
    x, y = to_batch([pred] * len(masks)), to_batch([gt] * len(masks))
    got = masked_ssim_1d(x, y, mask_batch(masks), data_range="pred")
    whole = ssim(x[:1], y[:1], data_range="pred").item()
    for m, g in zip(masks, got.tolist()):
        if m.sum() < 7:
            with pytest.warns(UserWarning, match="masked pixels"):
                ref = score_image(gt, pred, m)["masked_ssim"]
            assert abs(g - whole) < 1e-12
        else:
            ref = score_image(gt, pred, m)["masked_ssim"]
        assert abs(g - ref) < 1e-10


def test_metric_m_gradients_reach_only_the_lost_pixels(damaged):
    gt, masks, preds = damaged[1]
    few = np.zeros_like(masks[0])
    few[5, 5:8] = True  # 3 pixels: the whole-image fallback
    mask = mask_batch(masks[:2] + [few], torch.float32)
    y = to_batch([gt] * 3, torch.float32)
    for data_range in (1.0, "pred"):
        x = to_batch([preds[2], preds[0], preds[1]], torch.float32).requires_grad_(True)
        loss = build_loss({"metric_m": {"weight": 1.0, "data_range": data_range}})(x, y, mask)[0]
        loss.backward()
        g = x.grad.abs().sum(1, keepdim=True)  # (B,1,H,W)
        assert torch.isfinite(x.grad).all()
        lost = mask > 0
        assert (g[:2][~lost[:2]] == 0).all()  # unmasked pixels: no contribution at all
        assert (g[:2][lost[:2]] > 0).float().mean() > 0.95  # (nearly) every lost pixel gets a gradient
        assert (g[2] > 0).float().mean() > 0.95  # fallback image: the whole image


@pytest.mark.parametrize("name,key", [("metric_m", "masked_ssim"), ("metric", "score")])
def test_optimising_the_losses_raises_the_real_metric(damaged, name, key):
    gt, masks, _ = damaged[1]
    d_mask = masks[0]
    start = gray_rgb(to_gray(gt))  # what a colouriser starts from ...
    start[d_mask] = 40  # ... with the lost region flat, as in a damaged input
    target, mask = to_batch([gt], torch.float32), mask_batch([d_mask], torch.float32)
    pred = to_batch([start], torch.float32).requires_grad_(True)
    loss_fn = build_loss({name: 1.0})
    opt = torch.optim.Adam([pred], lr=0.02)
    for _ in range(50):
        opt.zero_grad()
        loss_fn(pred.clamp(0, 1), target, mask)[0].backward()
        opt.step()
    after = to_u8(pred.detach().clamp(0, 1)[0].permute(1, 2, 0).numpy())
    before_score, after_score = real_scores(gt, start, d_mask), real_scores(gt, after, d_mask)
    assert after_score[key] > before_score[key] + 0.2, (before_score, after_score)
    if name == "metric_m":  # M is judged on the lost pixels only: the rest is untouched
        assert np.array_equal(after[~d_mask], start[~d_mask])


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
