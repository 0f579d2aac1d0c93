"""Damage masks (imgrestore.data.masks): the exact training mask and test-time detection.

Built from skimage's bundled photos and the damage model; nothing here needs ../shared (the real
DACON samples are checked by benchmarks/mask_detection.py --dacon).
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage import data

from imgrestore.data.damage import SHAPES, DamageConfig, apply_damage, to_gray
from imgrestore.data.masks import Detection, detect_mask, true_mask


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


@pytest.fixture(scope="module")
def photos():
    return {
        "astronaut": data.astronaut(),  # 11% of its pixels are exactly 0 (black backdrop, helmet)
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
    }


def clip_contrast(rgb, gain=2.0):
    """Contrast stretched and clipped: big blown-out 255 and crushed 0 areas."""
    return np.clip((rgb.astype(np.float32) - 128) * gain + 128, 0, 255).round().astype(np.uint8)


# --- true_mask ------------------------------------------------------------------------------------

def test_true_mask_recovers_region_minus_pixels_equal_to_fill(photos):
    rgb = photos["chelsea"]
    gray = to_gray(rgb)
    # a fill value that is common in the photo, so some pixels inside keep their value
    fill = int(np.bincount(gray.ravel()).argmax())
    unchanged_seen = 0
    for shape in SHAPES:
        d = apply_damage(rgb, 11, DamageConfig(fill=(fill, fill), shapes=(shape,)))
        unchanged = d.mask & (gray == fill)
        unchanged_seen += unchanged.sum()
        m = true_mask(d.gray, rgb)
        assert m.dtype == bool and m.shape == gray.shape
        np.testing.assert_array_equal(m, d.mask & ~unchanged)
    assert unchanged_seen > 0  # the pixel mask really is a strict subset of the geometric one


def test_true_mask_is_exactly_pillow(photos):
    rgb = photos["coffee"]
    d = apply_damage(rgb, 3)
    expected = d.gray != np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(true_mask(d.gray, rgb), expected)
    # a gray ground truth works too
    np.testing.assert_array_equal(true_mask(d.gray, to_gray(rgb)), expected)


def test_true_mask_size_mismatch():
    with pytest.raises(ValueError):
        true_mask(np.zeros((10, 10), np.uint8), np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(ValueError):
        true_mask(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8))


# --- detect_mask on generated damage ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket", "astronaut"])
def test_detect_generated_damage(photos, name):
    rgb = photos[name]
    rng = np.random.default_rng({"chelsea": 1, "coffee": 2, "rocket": 3, "astronaut": 4}[name])
    fills = (6, 40, 80, 100) if name == "astronaut" else (0, 6, 40, 80, 100)  # astronaut + 0: below
    for shape in SHAPES:
        for fill in fills:
            d = apply_damage(rgb, rng, DamageConfig(fill=(fill, fill), shapes=(shape,)))
            found, info = detect_mask(d.gray, return_info=True)
            truth = true_mask(d.gray, rgb)
            assert iou(found, truth) > 0.9, (name, shape, fill)
            assert info.value == fill


@pytest.mark.parametrize("size", [128, 256])
def test_detect_on_small_crops(photos, size):
    rng = np.random.default_rng(size)
    for name, rgb in photos.items():
        crop = np.asarray(Image.fromarray(rgb[:300, :300]).resize((size, size), Image.BICUBIC))
        for _ in range(4):
            d = apply_damage(crop, rng, DamageConfig(fill=(10, 100)))
            assert iou(detect_mask(d.gray), true_mask(d.gray, crop)) > 0.9, name


def test_fill_zero_on_photo_with_black_areas(photos):
    """astronaut has large areas of exactly 0. With fill 0 the detector must still pick the damage
    over those areas; where the damage touches them (one component of 0s) it cuts the natural part
    off. Damage lying *over* dark pixels changes nothing visible there, so those draws are excluded."""
    rgb = photos["astronaut"]
    gray = to_gray(rgb)
    zero = gray == 0
    apart, touching = [], []
    for seed in range(120):
        d = apply_damage(rgb, seed, DamageConfig(fill=(0, 0)))
        score = iou(detect_mask(d.gray), true_mask(d.gray, rgb))
        if not (ndi.binary_dilation(d.mask) & zero & ~d.mask).any():
            apart.append(score)
        elif (gray[d.mask] <= 3).mean() < 0.02:
            touching.append(score)
    assert len(apart) >= 20 and len(touching) >= 5
    assert min(apart) > 0.9
    assert min(touching) > 0.9


def test_fill_zero_merged_with_crushed_shadow_is_split():
    """A rectangle of 0 touching a big natural black area (0 in the middle, ramping up to the scene
    around it) forms one component of 0s; the detector cuts the natural part off."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    scene = 120 + 40 * np.sin(xx / 23) + 30 * np.cos(yy / 31)  # smooth, textured background
    dist = np.hypot(yy - 150, xx - 70)
    scene = scene * np.clip((dist - 60) / 25, 0, 1)  # exactly 0 within r=60, ramping up to r=85
    gray = np.clip(scene, 0, 255).round().astype(np.uint8)
    truth = np.zeros_like(gray, bool)
    truth[120:180, 125:205] = True  # its left side cuts into the black core
    damaged = gray.copy()
    damaged[truth] = 0
    assert ndi.label(damaged == 0)[1] == 1  # really one component
    unsplit = (damaged == 0)
    assert iou(unsplit, truth) < 0.5
    found, info = detect_mask(damaged, return_info=True)
    assert info.split and info.value == 0
    assert iou(found, truth & (gray != 0)) > 0.9


def test_saturated_sky_and_shadow_are_not_taken_for_damage(photos):
    """A photo with a big blown-out sky (flat 255, ramping into the scene) and a crushed black
    ground (flat 0): the damage is still found."""
    rgb = photos["coffee"].astype(np.float32)
    h = rgb.shape[0]
    ramp = np.clip((np.arange(h)[:, None, None] - 0.35 * h) / (0.1 * h), 0, 1)  # 0 at top -> 1
    rgb = rgb * ramp + 255 * (1 - ramp)  # top 35% flat white, then a smooth ramp into the photo
    low = np.clip((0.8 * h - np.arange(h)[:, None, None]) / (0.08 * h), 0, 1)  # 1 -> 0 at the bottom
    rgb = (rgb * low).round().astype(np.uint8)  # bottom 20% flat black
    gray = to_gray(rgb)
    assert (gray == 255).mean() > 0.3 and (gray == 0).mean() > 0.15
    rng = np.random.default_rng(21)
    for shape in SHAPES:
        for fill in (5, 50, 100):
            d = apply_damage(rgb, rng, DamageConfig(fill=(fill, fill), shapes=(shape,)))
            truth = true_mask(d.gray, rgb)
            if fill == 5 and (ndi.binary_dilation(d.mask) & (gray == 5)).sum() > 0.01 * d.mask.sum():
                continue  # merged with the ramp's own 5s: covered by the split test
            found, info = detect_mask(d.gray, return_info=True)
            assert iou(found, truth) > 0.9, (shape, fill, info.candidates[:2])


def test_contrast_clipped_photo(photos):
    """Contrast x2 and clipped: many flat 0 and 255 areas with steep edges."""
    rng = np.random.default_rng(5)
    for name in ("chelsea", "coffee", "astronaut"):
        rgb = clip_contrast(photos[name])
        gray = to_gray(rgb)
        assert max((gray == 0).mean(), (gray == 255).mean()) > 0.02
        for shape in SHAPES:
            d = apply_damage(rgb, rng, DamageConfig(fill=(20, 100), shapes=(shape,)))
            assert iou(detect_mask(d.gray), true_mask(d.gray, rgb)) > 0.9, (name, shape, d.fill)


# --- detect_mask behaviour ------------------------------------------------------------------------

def test_holes_are_kept():
    """Like TEST_069 (self-intersecting polygon filled even-odd): untouched pixels enclosed by the
    damage are not damage."""
    gray = to_gray(data.chelsea())
    yy, xx = np.mgrid[: gray.shape[0], : gray.shape[1]]
    r = np.hypot(yy - 150, xx - 220)
    ring = (r < 70) & (r >= 30)
    damaged = gray.copy()
    damaged[ring] = 60
    hole = r < 30
    assert (gray[hole] != 60).mean() > 0.95
    found = detect_mask(damaged)
    assert iou(found, ring) > 0.99
    assert found[hole].mean() < 0.01


def test_return_info(photos):
    d = apply_damage(photos["chelsea"], 9, DamageConfig(fill=(77, 77)))
    mask, info = detect_mask(d.gray, return_info=True)
    assert isinstance(info, Detection)
    assert info.value == 77 and info.area == mask.sum()
    assert 0 <= info.jump <= 1 and 0 <= info.compactness <= 1 and 0 <= info.confidence <= 1
    assert info.score > 0 and not info.split
    assert info.candidates[0][0] == 77
    np.testing.assert_array_equal(detect_mask(d.gray), mask)


def test_rgb_input_and_bad_input(photos):
    d = apply_damage(photos["coffee"], 4)
    rgb_input = np.repeat(d.gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(detect_mask(rgb_input), detect_mask(d.gray))
    with pytest.raises(ValueError):
        detect_mask(d.gray.astype(np.float32))


def test_nothing_to_find():
    flat = np.full((64, 64), 128, np.uint8)
    mask, info = detect_mask(flat, return_info=True)
    assert not mask.any() and info.value == -1
    noise = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    assert detect_mask(noise).sum() < 0.01 * noise.size


def test_values_range(photos):
    d = apply_damage(photos["chelsea"], 2, DamageConfig(fill=(150, 150)))
    assert iou(detect_mask(d.gray), d.mask) > 0.9
    _, info = detect_mask(d.gray, values=(0, 100), return_info=True)
    assert info.value != 150
