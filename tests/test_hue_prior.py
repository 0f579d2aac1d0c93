"""Tests of imgrestore.models.hue_prior: hue-prior decoding keeps the known gray and moves the hue histogram."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgrestore.data.embedded import demo_photo
from imgrestore.metrics import hist_similarity
from imgrestore.models.color import pillow_luma
from imgrestore.models.hue_prior import BINS, SMOOTH, HuePrior, hue_histogram, same_luma_colours, steer_hues


def photo(index: int = 0, size: int = 64) -> np.ndarray:
    return np.asarray(Image.fromarray(demo_photo(index)).resize((size, size), Image.BICUBIC))


def gray_rgb(rgb: np.ndarray) -> np.ndarray:
    g = np.asarray(Image.fromarray(rgb).convert("L"))
    return np.repeat(g[..., None], 3, axis=-1)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("luma", [0, 3, 77, 128, 250, 255])
def test_same_luma_colours_have_that_luma_and_their_hue(luma):
    colours, hue = same_luma_colours(luma, 12)
    assert len(colours) and (pillow_luma(colours) == luma).all()
    assert ((colours >= 0) & (colours <= 255)).all() and (np.abs(colours - luma) <= 12).all()
    assert np.array_equal(hue, np.argmax([hue_histogram(c[None, None].astype(np.uint8)) for c in colours], axis=1))
    if 20 < luma < 235:  # away from black and white a faint chroma reaches almost every hue bin
        assert len(np.unique(hue)) > 150


def test_steering_keeps_the_gray_and_the_fixed_pixels():
    rgb = photo(0)
    fixed = np.zeros(rgb.shape[:2], bool)
    fixed[10:30, 20:50] = True  # a lost region: its pixels keep the model's colour
    target = np.ones(BINS)
    out = steer_hues(rgb, target, ~fixed)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.array_equal(pillow_luma(out), pillow_luma(rgb))  # every pixel's Pillow gray, exactly
    assert np.array_equal(np.asarray(Image.fromarray(out).convert("L")), np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.array_equal(out[fixed], rgb[fixed])
    assert not np.array_equal(out, rgb)
    assert np.array_equal(steer_hues(rgb, target, ~fixed, seed=0), out)  # deterministic for a seed


def test_steering_a_gray_image_reaches_a_photos_hue_histogram():
    """Gray in, the truth's hue histogram as the target: the output's histogram follows it (the metric's C),
    while every pixel keeps its gray and moves by a faint chroma only."""
    truth = photo(1)
    gray = gray_rgb(truth)
    free = np.ones(gray.shape[:2], bool)
    out = steer_hues(gray, hue_histogram(truth), free)
    assert hist_similarity(truth, gray) < 0.5
    assert hist_similarity(truth, out) > 0.9
    assert np.array_equal(pillow_luma(out), pillow_luma(gray))
    assert np.abs(out.astype(int) - gray).max() <= 12


def test_steering_moves_towards_the_target_and_not_elsewhere():
    rgb = photo(2)
    free = np.ones(rgb.shape[:2], bool)
    own = hue_histogram(rgb)
    other = hue_histogram(photo(0))
    out = steer_hues(rgb, other, free)
    # a saturated photo: strong colours are costly to move (faint chroma only), so it moves part of the way
    assert corr(hue_histogram(out), other) > corr(own, other) + 0.1
    kept = steer_hues(rgb, own, free)  # already there: little to move
    assert corr(hue_histogram(kept), own) > 0.95


def test_nothing_free_changes_nothing():
    rgb = photo(0, 16)
    assert np.array_equal(steer_hues(rgb, np.ones(BINS), np.zeros((16, 16), bool)), rgb)


def test_bad_inputs_are_clear_errors():
    rgb = photo(0, 16)
    free = np.ones((16, 16), bool)
    with pytest.raises(ValueError, match="uint8"):
        steer_hues(rgb.astype(np.float32), np.ones(BINS), free)
    with pytest.raises(ValueError, match="target"):
        steer_hues(rgb, np.ones(10), free)
    with pytest.raises(ValueError, match="target"):
        steer_hues(rgb, np.zeros(BINS), free)
    with pytest.raises(ValueError, match="free mask shape"):
        steer_hues(rgb, np.ones(BINS), np.ones((8, 8), bool))
    with pytest.raises(RuntimeError, match="before fit"):
        HuePrior().transform(rgb, ~free)
    with pytest.raises(ValueError, match="180 bins"):
        HuePrior(np.ones(5))
    with pytest.raises(ValueError, match="no images"):
        HuePrior().fit([])


def test_prior_has_the_highest_mean_correlation_with_its_images_and_round_trips():
    images = [photo(i, 32) for i in range(3)]
    prior = HuePrior().fit(images)
    hists = [hue_histogram(im) for im in images]

    def mean_corr(h):
        return np.mean([np.corrcoef(h, t)[0, 1] for t in hists])

    assert (prior.histogram >= 0).all()
    rivals = [np.mean([h / h.sum() for h in hists], axis=0), *hists]
    rng = np.random.default_rng(0)
    rivals += [prior.histogram + rng.normal(0, prior.histogram.std() * 0.3, BINS) for _ in range(5)]
    assert all(mean_corr(prior.histogram) > mean_corr(r) + 1e-9 for r in rivals)
    again = HuePrior.from_config(prior.to_config())
    assert np.allclose(again.histogram, prior.histogram, atol=1e-8)
    assert (again.smooth, again.steer_lost) == (prior.smooth, prior.steer_lost) == (SMOOTH, True)
    assert HuePrior.from_config(None) is None
    # a prior saved before these were stored decodes as it did when its champion was chosen (hole kept)
    legacy = {k: v for k, v in prior.to_config().items() if k not in ("smooth", "steer_lost")}
    assert (HuePrior.from_config(legacy).smooth, HuePrior.from_config(legacy).steer_lost) == (SMOOTH, False)
    mask = np.zeros((32, 32), bool)
    mask[5:9, 5:9] = True
    gray = np.repeat(pillow_luma(images[0])[..., None], 3, -1).astype(np.uint8)
    out = prior.transform(gray, mask)  # the lost region is steered too, and every gray stays exact
    assert not np.array_equal(out[mask], gray[mask])
    assert np.array_equal(pillow_luma(out), pillow_luma(gray))
    kept = HuePrior(prior.histogram, steer_lost=False).transform(gray, mask)
    assert np.array_equal(kept[mask], gray[mask]) and not np.array_equal(kept, gray)
    assert np.array_equal(pillow_luma(kept), pillow_luma(gray))


def test_a_target_with_empty_bins_keeps_every_pixel_valid():
    """Bins the target leaves at 0 (the fitted prior's minimum is exactly 0): every pixel still gets a colour of
    its own gray, none an arbitrary one from a plan row of zeros."""
    rng = np.random.default_rng(3)
    rgb = np.repeat(rng.integers(0, 256, (24, 24, 1), dtype=np.uint8), 3, axis=2)
    rgb[:4] = 0  # black pixels reach few hue bins
    target = np.zeros(BINS)
    target[60] = 1.0  # green only
    free = np.ones((24, 24), bool)
    out = steer_hues(rgb, target, free)
    assert np.array_equal(pillow_luma(out), pillow_luma(rgb))
    assert (np.abs(out.astype(int) - rgb.astype(int)) <= 12).all()  # within max_step of its own gray
    with pytest.raises(ValueError, match="eps must be positive"):
        steer_hues(rgb, target, free, eps=0.0)
