"""The damage model: turn any colour photo into a DACON-style (input, ground truth) pair.

DACON 236420 inputs are the Pillow ``convert("L")`` gray of the colour original with ONE connected
region replaced by ONE constant gray value (seen: 0 to ~100). Shapes seen on real samples: circles,
axis-aligned rectangles, triangles, star-like and concave polygons, some of them self-intersecting
polygons filled with the even-odd rule (TEST_069 has an enclosed hole where two spikes cross), about
1% to 15% of the image.

    >>> rng = np.random.default_rng(0)
    >>> damaged = apply_damage(rgb, rng)            # rgb: HxWx3 uint8
    >>> damaged.gray, damaged.mask, damaged.fill, damaged.shape

``mask`` is the *geometric* region that was filled. Pixels inside it whose original gray already
equalled the fill value are unchanged, so the mask a trainer recovers from pixels
(``input != gray(gt)``, see :func:`imgrestore.data.masks.true_mask`) can be a strict subset of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

SHAPES = ("circle", "rectangle", "triangle", "star", "polygon")

_MAX_TRIES = 1000
_PROBE = 128.0  # scale (px) at which a unit shape is rasterised to measure its area


@dataclass(frozen=True)
class DamageConfig:
    """What damage to draw.

    area:   (low, high) fraction of the image covered by the region, drawn uniformly; the rasterised
            region always lands within these bounds (draws outside them are redrawn).
    fill:   (low, high) inclusive range of the constant gray fill value, drawn uniformly.
    shapes: the shapes to draw from, uniformly; a subset of ``SHAPES``.
    """

    area: tuple[float, float] = (0.01, 0.15)
    fill: tuple[int, int] = (0, 100)
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        lo, hi = self.area
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"area must satisfy 0 < low <= high < 1, got {self.area}")
        flo, fhi = self.fill
        if not (int(flo) == flo and int(fhi) == fhi and 0 <= flo <= fhi <= 255):
            raise ValueError(f"fill must be integers with 0 <= low <= high <= 255, got {self.fill}")
        if isinstance(self.shapes, str) or not self.shapes:
            raise ValueError(f"shapes must be a non-empty tuple of names from {SHAPES}, got {self.shapes!r}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; choose from {SHAPES}")
        object.__setattr__(self, "area", (float(lo), float(hi)))
        object.__setattr__(self, "fill", (int(flo), int(fhi)))
        object.__setattr__(self, "shapes", tuple(self.shapes))


class Damaged(NamedTuple):
    """A damaged image. gray: HxW uint8 input; mask: HxW bool geometric region; fill: its gray value;
    shape: which of ``SHAPES`` was drawn."""

    gray: np.ndarray
    mask: np.ndarray
    fill: int
    shape: str


def to_gray(image: np.ndarray) -> np.ndarray:
    """HxW uint8 gray exactly as DACON made it: Pillow ``convert("L")`` (ITU-R 601-2 luma, rounded).

    An HxW array is taken as gray already and returned as uint8.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB or HxW gray image, got shape {image.shape}")
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"), dtype=np.uint8)


# --- unit shapes: vertex arrays (rows, cols) around the origin, roughly of radius 1 ---------------

def _rotate(r: np.ndarray, c: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    ct, st = np.cos(theta), np.sin(theta)
    return r * ct - c * st, r * st + c * ct


def _unit_circle(rng: np.random.Generator):
    # An ellipse with axis ratio in [0.5, 1] (a circle a third of the time), at a random angle.
    ratio = 1.0 if rng.random() < 1 / 3 else rng.uniform(0.5, 1.0)
    t = np.linspace(0.0, 2 * np.pi, 180, endpoint=False)
    return _rotate(np.sin(t) * ratio, np.cos(t), rng.uniform(0, np.pi))


def _unit_rectangle(rng: np.random.Generator):
    # Axis-aligned, as in the real samples; aspect ratio log-uniform in [1/4, 4].
    aspect = np.exp(rng.uniform(np.log(0.25), np.log(4.0)))
    h, w = np.sqrt(aspect), 1.0 / np.sqrt(aspect)
    return np.array([-h, -h, h, h]) / 2, np.array([-w, w, w, -w]) / 2


def _unit_triangle(rng: np.random.Generator):
    # Three points on a circle, redrawn until every angle is at least 15 degrees.
    while True:
        t = np.sort(rng.uniform(0, 2 * np.pi, 3))
        arcs = np.diff(np.r_[t, t[0] + 2 * np.pi])  # inscribed angle = half the opposite arc
        if arcs.min() / 2 >= np.deg2rad(15):
            return np.sin(t), np.cos(t)


def _unit_star(rng: np.random.Generator):
    # 4 to 8 points, alternating outer and inner radius, with jitter in radius and angle.
    n = int(rng.integers(4, 9))
    inner = rng.uniform(0.3, 0.65)
    k = np.arange(2 * n)
    t = (k + rng.uniform(-0.2, 0.2, 2 * n)) * np.pi / n + rng.uniform(0, 2 * np.pi)
    rad = np.where(k % 2 == 0, 1.0, inner) * rng.uniform(0.85, 1.15, 2 * n)
    return rad * np.sin(t), rad * np.cos(t)


def _unit_polygon(rng: np.random.Generator):
    # 4 to 8 random vertices. Half the time ordered by angle (a simple, usually concave polygon);
    # otherwise in random order: self-intersecting, filled even-odd, so the crossings can leave
    # enclosed holes and thin spikes, like TEST_069 and TEST_094.
    n = int(rng.integers(4, 9))
    t = rng.uniform(0, 2 * np.pi, n)
    rad = rng.uniform(0.25, 1.0, n)
    if rng.random() < 0.5:
        t = np.sort(t)
    return rad * np.sin(t), rad * np.cos(t)


_UNIT = {
    "circle": _unit_circle,
    "rectangle": _unit_rectangle,
    "triangle": _unit_triangle,
    "star": _unit_star,
    "polygon": _unit_polygon,
}


def _raster(r: np.ndarray, c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill a polygon with Pillow's ImageDraw (scanline, even-odd rule for self-intersections)."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(list(zip(c.tolist(), r.tolist())), fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _is_one_region(mask: np.ndarray) -> bool:
    _, n = ndi.label(mask)  # 4-connectivity: the strictest reading of "one connected region"
    return n == 1


def _region(height: int, width: int, rng: np.random.Generator, config: DamageConfig) -> tuple[np.ndarray, str]:
    lo, hi = config.area
    total = height * width
    if hi * total < 1:
        raise ValueError(f"a {height}x{width} image is too small for area fractions {config.area}")
    for _ in range(_MAX_TRIES):
        shape = config.shapes[int(rng.integers(len(config.shapes)))]
        r, c = _UNIT[shape](rng)
        # Measure the unit shape's area by rasterising it at a known scale (works for
        # self-intersecting even-odd polygons too), then scale it to the target area.
        pr, pc = r * _PROBE, c * _PROBE
        probe = _raster(pr - pr.min(), pc - pc.min(), (int(np.ptp(pr)) + 2, int(np.ptp(pc)) + 2))
        unit_area = probe.sum() / _PROBE**2
        if unit_area <= 0:
            continue
        scale = np.sqrt(rng.uniform(lo, hi) * total / unit_area)
        r, c = r * scale, c * scale
        span_r, span_c = np.ptp(r), np.ptp(c)
        if span_r > height - 1 or span_c > width - 1:
            continue  # does not fit inside the image: draw again
        r = r - r.min() + rng.uniform(0, height - 1 - span_r)
        c = c - c.min() + rng.uniform(0, width - 1 - span_c)
        mask = _raster(r, c, (height, width))
        if lo <= mask.sum() / total <= hi and _is_one_region(mask):
            return mask, shape
    raise RuntimeError(
        f"could not draw a single connected region covering {config.area} of a {height}x{width} image "
        f"in {_MAX_TRIES} tries; the image is probably too small for these bounds"
    )


def random_mask(height: int, width: int, rng=None, config: DamageConfig = DamageConfig()) -> np.ndarray:
    """HxW bool: one 4-connected region fully inside the image, with area fraction in ``config.area``.

    rng: a ``np.random.Generator``, or a seed for ``np.random.default_rng``.
    """
    return _region(int(height), int(width), np.random.default_rng(rng), config)[0]


def apply_damage(rgb: np.ndarray, rng=None, config: DamageConfig = DamageConfig()) -> Damaged:
    """Gray the photo with Pillow and fill one random region with one constant gray value.

    rgb: HxWx3 uint8 (an HxW uint8 array is taken as gray already).
    rng: a ``np.random.Generator``, or a seed for ``np.random.default_rng``.
    Returns ``Damaged(gray, mask, fill, shape)``; ``mask`` is the geometric region (see module doc).
    """
    rng = np.random.default_rng(rng)
    gray = to_gray(rgb).copy()
    mask, shape = _region(gray.shape[0], gray.shape[1], rng, config)
    fill = int(rng.integers(config.fill[0], config.fill[1] + 1))
    gray[mask] = fill
    return Damaged(gray=gray, mask=mask, fill=fill, shape=shape)
