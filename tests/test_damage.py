"""The damage model (imgrestore.data.damage): DACON-style pairs from any colour photo.

Built from skimage's bundled photos; nothing here needs ../shared.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage import data

from imgrestore.data.damage import SHAPES, DamageConfig, Damaged, apply_damage, random_mask, to_gray


@pytest.fixture(scope="module")
def photos():
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}


def pillow_gray(rgb):
    return np.asarray(Image.fromarray(rgb).convert("L"))


def test_to_gray_is_pillow_convert_L(photos):
    for rgb in photos.values():
        g = to_gray(rgb)
        assert g.dtype == np.uint8 and g.shape == rgb.shape[:2]
        np.testing.assert_array_equal(g, pillow_gray(rgb))
    # non-contiguous views work too, and a gray image is passed through
    view = photos["coffee"][::2, ::3]
    np.testing.assert_array_equal(to_gray(view), pillow_gray(np.ascontiguousarray(view)))
    gray = pillow_gray(photos["chelsea"])
    np.testing.assert_array_equal(to_gray(gray), gray)


def test_reproducible_with_seed(photos):
    rgb = photos["chelsea"]
    a = apply_damage(rgb, np.random.default_rng(42))
    b = apply_damage(rgb, np.random.default_rng(42))
    c = apply_damage(rgb, 42)  # a seed works as well as a Generator
    for other in (b, c):
        np.testing.assert_array_equal(a.gray, other.gray)
        np.testing.assert_array_equal(a.mask, other.mask)
        assert (a.fill, a.shape) == (other.fill, other.shape)
    np.testing.assert_array_equal(random_mask(200, 300, 7), random_mask(200, 300, np.random.default_rng(7)))


def test_different_seeds_differ(photos):
    masks = [random_mask(128, 128, seed) for seed in range(10)]
    distinct = {m.tobytes() for m in masks}
    assert len(distinct) == 10
    # and one Generator gives different draws call after call
    rng = np.random.default_rng(0)
    assert not np.array_equal(random_mask(128, 128, rng), random_mask(128, 128, rng))


def test_input_not_modified(photos):
    rgb = photos["coffee"].copy()
    apply_damage(rgb, 0)
    np.testing.assert_array_equal(rgb, photos["coffee"])


@pytest.mark.parametrize("area", [(0.01, 0.15), (0.05, 0.06), (0.2, 0.3)])
def test_area_fraction_within_bounds(area):
    rng = np.random.default_rng(1)
    config = DamageConfig(area=area)
    fractions = np.array([random_mask(96, 128, rng, config).mean() for _ in range(150)])
    assert fractions.min() >= area[0] and fractions.max() <= area[1]
    if area == (0.01, 0.15):  # roughly uniform: both ends of the range are reached
        assert fractions.min() < 0.03 and fractions.max() > 0.13


def test_fill_within_bounds(photos):
    rgb = photos["astronaut"][::4, ::4]
    rng = np.random.default_rng(2)
    fills = [apply_damage(rgb, rng).fill for _ in range(200)]
    assert min(fills) >= 0 and max(fills) <= 100
    assert min(fills) <= 10 and max(fills) >= 90
    fills = {apply_damage(rgb, rng, DamageConfig(fill=(17, 19))).fill for _ in range(60)}
    assert fills == {17, 18, 19}
    assert {apply_damage(rgb, rng, DamageConfig(fill=(0, 0))).fill for _ in range(5)} == {0}


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_is_one_connected_region(shape):
    rng = np.random.default_rng(3)
    config = DamageConfig(shapes=(shape,))
    for size in ((64, 64), (128, 96), (256, 256)):
        for _ in range(25):
            m = random_mask(*size, rng, config)
            assert m.dtype == bool and m.shape == size
            _, n4 = ndi.label(m)  # 4-connectivity, the strict reading
            assert n4 == 1


def test_damage_pixels(photos):
    """Outside the mask: exactly Pillow's gray; inside: the fill value; the original is untouched."""
    rng = np.random.default_rng(4)
    for rgb in photos.values():
        gray = pillow_gray(rgb)
        for _ in range(5):
            d = apply_damage(rgb, rng)
            assert isinstance(d, Damaged)
            assert d.gray.dtype == np.uint8 and d.gray.shape == gray.shape
            assert d.mask.dtype == bool and d.mask.shape == gray.shape
            np.testing.assert_array_equal(d.gray[~d.mask], gray[~d.mask])
            assert (d.gray[d.mask] == d.fill).all()
            assert d.shape in SHAPES


def test_every_shape_appears():
    rng = np.random.default_rng(5)
    seen = {apply_damage(np.zeros((64, 64, 3), np.uint8), rng).shape for _ in range(100)}
    assert seen == set(SHAPES)
    only = {apply_damage(np.zeros((64, 64, 3), np.uint8), rng, DamageConfig(shapes=("star", "triangle"))).shape
            for _ in range(40)}
    assert only == {"star", "triangle"}


def test_polygons_can_have_holes_like_test_069():
    """Self-intersecting polygons are filled even-odd, so a crossing can enclose untouched pixels."""
    rng = np.random.default_rng(8)
    config = DamageConfig(shapes=("polygon",))
    holes = sum(ndi.binary_fill_holes(m).sum() > m.sum() for m in (random_mask(128, 128, rng, config) for _ in range(300)))
    assert holes >= 1


def test_config_validation():
    with pytest.raises(ValueError):
        DamageConfig(area=(0.0, 0.1))
    with pytest.raises(ValueError):
        DamageConfig(area=(0.2, 0.1))
    with pytest.raises(ValueError):
        DamageConfig(fill=(-1, 10))
    with pytest.raises(ValueError):
        DamageConfig(fill=(0, 256))
    with pytest.raises(ValueError):
        DamageConfig(shapes=("hexagon",))
    with pytest.raises(ValueError):
        DamageConfig(shapes="circle")
    with pytest.raises(ValueError):
        DamageConfig(shapes=())
    c = DamageConfig(area=[0.02, 0.05], fill=[3, 4], shapes=["circle"])
    assert c == DamageConfig(area=(0.02, 0.05), fill=(3, 4), shapes=("circle",))
    hash(c)  # frozen and hashable
    with pytest.raises(Exception):
        c.area = (0.1, 0.2)


def test_bad_inputs():
    with pytest.raises(ValueError):
        apply_damage(np.zeros((32, 32, 3), np.float32), 0)
    with pytest.raises(ValueError):
        apply_damage(np.zeros((32, 32, 4), np.uint8), 0)
    with pytest.raises(ValueError):
        random_mask(4, 4, 0, DamageConfig(area=(0.01, 0.02)))  # 16 px * 0.02 < 1 pixel
