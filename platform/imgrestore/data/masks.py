"""Damage masks: the exact one from a training pair, and the damage found in a damaged input alone.

DACON 236420 damage is a region filled with ONE constant gray value (see :mod:`imgrestore.data.damage`).
At training time the mask is exact: :func:`true_mask`. At test time it has to be found from the input,
and the detector must not assume there is exactly one region: a test input with two damaged regions
restored in only one leaves the other as a flat block in the submission, and an undamaged input must
not get a made-up region. So :func:`detect_regions` keeps *every* region with the damage's signature,
says when it saw none (``undamaged``), and says when it is not sure (``unsure``);
:func:`detect_mask` is its union mask, for callers that only need the pixels.

The signature: a large, solid, connected set of pixels of one exact value whose border is a *step*.
Natural photos do have big flat areas of one exact value (blown-out 255 skies, crushed 0 shadows,
very smooth gradients), but there the image fades into the flat area (the pixels just outside differ
by 1 or 2 levels), while at the damage border the photo jumps from the fill value to whatever the
scene was. Where two flat areas touch (damage over a blown-out sky, or beside it) the step between
them is ambiguous; it is credited to the one whose *other* border jumps more, so a natural flat area
next to the damage does not borrow the damage's step and get restored as a second region.

How much evidence is enough is tied to the damage model, which makes regions of 1-15% of the image
(real samples: 1.2-13%): a region counts only if it covers at least half the smallest damage (0.5%),
is solid rather than a line or band, and jumps on a clear share of its border. Below that it is
noise or a natural flat area, and the mask stays empty rather than marking a few stray pixels. The
share asked for depends on the value: a photo has no large plateau of one exact *mid* gray with a
stepping border, but clipping makes flat 0 and 255 areas whose edges can be sharp, so those values
need more. A weak best candidate is still restored (a missed region is worse than a recoloured
flat area) but flagged ``unsure``, as is a near miss left out; the thresholds and the measurements
behind them are at ``MIN_AREA`` below.

The detector returns each component's exact pixels without filling holes: real damage can enclose
untouched image (TEST_069 is a self-intersecting polygon filled even-odd, with a hole where two
spikes cross), and any pixel not equal to the fill value cannot be damage.

Known limit: when the fill value also occurs in a natural flat area that the damage touches (fill 0
against a crushed-black shadow), the two form one component. The detector then tries to cut the
natural part off (the part whose border ramps rather than jumps) by keeping the component inside the
convex hull of its jumping border; this recovers convex shapes well and concave ones partly. Where
the damage lies *over* such an area it changes (almost) nothing there and cannot be seen at all.
Such a cut-off piece is taken only as the best region: as an extra region it is more often a
sharp-edged natural shadow than a second damage (it is then reported as a near miss). And a second
region whose surroundings are within a few levels of its fill (or as textured as the step) can be
missed, about 1% of regions; it is then flagged as a near miss as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.measure import label as _label
from skimage.morphology import convex_hull_image


def true_mask(input_gray: np.ndarray, gt_rgb: np.ndarray) -> np.ndarray:
    """HxW bool: exactly ``input_gray != gray(gt)`` with Pillow's ``convert("L")``, as DACON made it.

    Pixels inside the damage whose original gray equalled the fill value are not in this mask.
    """
    input_gray = np.asarray(input_gray)
    gt_rgb = np.asarray(gt_rgb)
    if input_gray.ndim != 2:
        raise ValueError(f"input_gray must be HxW, got shape {input_gray.shape}")
    if gt_rgb.shape[:2] != input_gray.shape:
        raise ValueError(f"input {input_gray.shape} and ground truth {gt_rgb.shape} differ in size")
    gt_gray = np.asarray(Image.fromarray(np.ascontiguousarray(gt_rgb)).convert("L"))
    return input_gray != gt_gray


# --- evidence thresholds ------------------------------------------------------------------------
# The damage model (and the real samples) make regions of 1-15% of the image. A region needs at least
# half the smallest of them; candidates from a quarter of it are scored, so a near miss shows up.
MIN_AREA = 0.005
# Border pixels per sqrt(area), i.e. (1 - compactness) * sqrt(area): scale-free, unlike compactness.
# Damage shapes of >= 0.5% of the image stay below ~12 (thin stars, spiky polygons); a one-pixel line
# of that area is far above it.
MAX_THIN = 14.0
# Share of the border that jumps (see detect_regions), by the region's value. Measured on crops of
# 113 photos (as they are and contrast-clipped x1.6): natural flat areas of a mid value (a smooth
# plateau) ramp, jump <= 0.13 in ~670 of them; natural flat areas at a clipping value (255
# highlights, 0 shadows) can have sharp edges, up to ~0.5 (more when clipped harder). Damage: median
# ~0.9, 1st percentile ~0.47, lowest 0.35 in 800 regions; it is low where the scene around it is
# within a few levels of the fill value or as textured as the step. The weak value is the floor
# below which a region is never taken; between the two a region is taken only if nothing is strong.
JUMP_STRONG = 0.35
JUMP_WEAK = 0.15
JUMP_STRONG_CLIPPED = 0.65
JUMP_WEAK_CLIPPED = 0.3
CLIPPED_VALUES = (0, 255)
# Overall confidence below this -> unsure.
UNSURE_BELOW = 0.5
# Fewest border edges a region needs for its jump share to mean anything.
_MIN_EDGES = 12


@dataclass(frozen=True)
class Region:
    """One region with the damage signature (or a candidate for one).

    value:       its fill value.
    area:        its size in pixels.
    jump:        share of its border where the gray jumps (see :func:`detect_regions`).
    compactness: share of its pixels whose four neighbours are all in the region.
    score:       sqrt(area) * compactness**2 * jump**4, the ranking used between candidates.
    evidence:    0..1, how far it meets the evidence thresholds, 1 when all are met: the product of
                 three ramps, area from MIN_AREA/2 up to MIN_AREA, thinness from 2*MAX_THIN down to
                 MAX_THIN, jump from the weak up to the strong threshold of its value.
    bbox:        (top, left, bottom, right), bottom and right exclusive.
    split:       True if natural pixels of the same value were cut off it (see the module doc).
    """

    value: int
    area: int
    jump: float
    compactness: float
    score: float
    evidence: float
    bbox: tuple[int, int, int, int]
    split: bool = False


@dataclass(frozen=True)
class DetectionReport:
    """What :func:`detect_regions` found in one image.

    mask:       HxW bool, the union of ``regions`` (all False when undamaged).
    regions:    the regions taken for damage, best score first.
    rejected:   up to five candidates left out, the nearest misses (highest evidence) first.
    confidence: 0..1: min(the weakest region's evidence, 1 - the strongest rejected candidate's
                evidence); 1 for an image with nothing resembling damage.
    undamaged:  no region has the damage signature: ``mask`` is empty.
    unsure:     confidence < 0.5: a weakly jumping region was taken, or a near miss was left out.
    reasons:    why it is unsure, in words (empty otherwise).
    """

    mask: np.ndarray = field(repr=False, compare=False)
    regions: tuple[Region, ...]
    rejected: tuple[Region, ...]
    confidence: float
    undamaged: bool
    unsure: bool
    reasons: tuple[str, ...] = ()

    @property
    def area(self) -> int:
        return int(sum(r.area for r in self.regions))

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(r.value for r in self.regions)

    def as_row(self) -> dict:
        """The report as one flat record (a CSV row): counts, fill values, boxes, confidence, flags.

        ``fill_values`` and ``bboxes`` list the regions in the same order, space-separated; a box is
        ``top,left,bottom,right`` (bottom and right exclusive)."""
        return {
            "regions": len(self.regions),
            "area_px": self.area,
            "area_share": round(self.area / max(self.mask.size, 1), 5),
            "fill_values": " ".join(str(v) for v in self.values),
            "bboxes": " ".join(",".join(str(c) for c in r.bbox) for r in self.regions),
            "confidence": round(self.confidence, 4),
            "undamaged": self.undamaged,
            "unsure": self.unsure,
            "reasons": "; ".join(self.reasons),
        }

    def summary(self) -> str:
        """One line: e.g. ``2 regions, 5120 px, fill 40/80, confidence 0.97``."""
        if self.undamaged:
            head = "undamaged (no region with the damage signature)"
        else:
            n = len(self.regions)
            head = (f"{n} region{'s' if n > 1 else ''}, {self.area} px, fill "
                    f"{'/'.join(str(v) for v in self.values)}")
        tail = f", confidence {self.confidence:.2f}"
        if self.unsure:
            tail += " UNSURE: " + "; ".join(self.reasons)
        return head + tail


@dataclass(frozen=True)
class Detection:
    """Diagnostics of :func:`detect_mask` (``return_info=True``): its best region, as before
    :func:`detect_regions` reported all of them.

    value:       the fill value of the best region (-1 if nothing was found).
    area:        its size in pixels (the mask is the union of all regions, so it can be larger).
    jump, compactness, score, split: as in :class:`Region`.
    confidence:  the report's confidence (see :class:`DetectionReport`).
    candidates:  (value, area, jump, compactness, score) of the best few candidates, best first.
    """

    value: int
    area: int
    jump: float
    compactness: float
    score: float
    confidence: float
    split: bool = False
    candidates: tuple[tuple[int, int, float, float, float], ...] = field(default=())


# Candidates whose border jumps less than this are checked for a merge with a natural flat area ...
_SPLIT_BELOW = 0.5
# ... and split when the kept part jumps at least this much and the cut-off part at most that much.
_SPLIT_KEEP, _SPLIT_CUT = 0.6, 0.3
_SPLIT_TRIES = 3
# ... unless it is (nearly) convex already: a damage shape with a natural blob merged into it is not.
_SOLID = 0.9


def _is_jump(p, q, q2, step: int, ratio: float):
    """Edge p (inside) -> q (outside) -> q2 (beyond): does the gray jump at the border?"""
    d1 = np.abs(q - p)
    return (d1 > step) & (d1 > ratio * np.abs(q2 - q))


def _border_stats(x: np.ndarray, lab: np.ndarray, which: np.ndarray, k: int, step: int, ratio: float):
    """Border edges of the k candidate components and how many of them are jumps.

    which: HxW int, 1..k for pixels of a candidate component, 0 elsewhere. Edges whose q2 would
    leave the image are not counted. An edge between two candidates (both flat) jumps for both; it
    is counted only for the one whose other edges jump more (Laplace-smoothed share), so a natural
    flat area does not borrow the step of the damage beside it, while damage lying inside a flat
    sky still gets its step. Returns (edges, jumps, own_share), own_share being that smoothed share
    of the edges into no other candidate.
    """
    own_edges = np.zeros(k + 1, np.int64)
    own_jumps = np.zeros(k + 1, np.int64)
    shared_a, shared_b, shared_jump = [], [], []
    xi = x.astype(np.int16)
    for axis in (0, 1):
        xa, la, wa = (np.moveaxis(a, axis, 0) for a in (xi, lab, which))
        for xs, ls, ws in ((xa, la, wa), (xa[::-1], la[::-1], wa[::-1])):
            sel = (ws[:-2] > 0) & (ls[:-2] != ls[1:-1])
            a, b = ws[:-2][sel], ws[1:-1][sel]
            jump = _is_jump(xs[:-2][sel], xs[1:-1][sel], xs[2:][sel], step, ratio)
            own = b == 0
            own_edges += np.bincount(a[own], minlength=k + 1)
            own_jumps += np.bincount(a[own & jump], minlength=k + 1)
            shared_a.append(a[~own])
            shared_b.append(b[~own])
            shared_jump.append(jump[~own])
    a, b, jump = np.concatenate(shared_a), np.concatenate(shared_b), np.concatenate(shared_jump)
    own_share = (own_jumps + 1) / (own_edges + 2)
    keep = own_share[a] >= own_share[b]
    edges = own_edges + np.bincount(a[keep], minlength=k + 1)
    jumps = own_jumps + np.bincount(a[keep & jump], minlength=k + 1)
    return edges, jumps, own_share


def _compactness(region: np.ndarray) -> float:
    r = region
    inner = r[1:-1, 1:-1] & r[:-2, 1:-1] & r[2:, 1:-1] & r[1:-1, :-2] & r[1:-1, 2:]
    return float(inner.sum() / max(r.sum(), 1))


def _split(x: np.ndarray, region: np.ndarray, step: int, ratio: float, ignore: np.ndarray | None = None):
    """Cut natural flat pixels off a damage region they merged with, or return None.

    ignore: HxW bool, outside pixels whose edges count neither way (flat areas that own the step
    between them and the region, see :func:`_border_stats`; without this a natural shadow touching
    the damage would be "split" along the damage's own border).

    Skipped when the region is nearly convex already (solidity >= 0.9). Otherwise, per pixel of the
    region, count its outer border edges that jump and that do not; smooth both counts along the
    border, take the border pixels where jumps dominate, keep the long chains of them (the damage
    outline; short ones are stray sharp edges of the natural area) and keep the part of the region
    inside their convex hull. Accepted only if the kept part's border jumps (>= 0.6) and the
    cut-off part's border does not (<= 0.3). Returns (mask, jump share of the kept part) or None.
    """
    rows, cols = np.nonzero(region)
    pad = 3
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, x.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, x.shape[1])
    xs, cs = x[r0:r1, c0:c1].astype(np.int16), region[r0:r1, c0:c1]
    ig = np.zeros(cs.shape, bool) if ignore is None else ignore[r0:r1, c0:c1]
    if cs.sum() >= _SOLID * convex_hull_image(cs).sum():
        return None  # already one convex shape: nothing irregular merged into it
    hard = np.zeros(cs.shape, np.int16)
    soft = np.zeros(cs.shape, np.int16)
    for axis in (0, 1):
        xa, ca, ha, sa, ia = (np.moveaxis(a, axis, 0) for a in (xs, cs, hard, soft, ig))
        for flip in (slice(None), slice(None, None, -1)):
            X, M, H, S, I = xa[flip], ca[flip], ha[flip], sa[flip], ia[flip]
            outer = M[:-2] & ~M[1:-1] & ~I[1:-1]
            jumps = outer & _is_jump(X[:-2], X[1:-1], X[2:], step, ratio)
            H[:-2] += jumps
            S[:-2] += outer & ~jumps
    border = (hard + soft) > 0
    dominant = border & (ndi.gaussian_filter(hard.astype(np.float32), 2.0) > ndi.gaussian_filter(soft.astype(np.float32), 2.0))
    if dominant.sum() < 3:
        return None
    chains, n = ndi.label(ndi.binary_dilation(dominant, iterations=2), structure=np.ones((3, 3), bool))
    length = np.bincount(chains[dominant], minlength=n + 1)
    length[0] = 0
    seeds = dominant & (length >= 0.25 * length.max())[chains]
    kept = cs & convex_hull_image(seeds)
    lab, n = ndi.label(kept)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    kept = lab == sizes.argmax()
    cut = cs & ~kept
    if not 0.05 < kept.sum() / cs.sum() < 0.95:
        return None

    def share(part):
        j, s = hard[part].sum(), soft[part].sum()
        return j / max(j + s, 1)

    jump_kept = share(kept)
    if jump_kept < _SPLIT_KEEP or share(cut) > _SPLIT_CUT:
        return None
    out = np.zeros(region.shape, bool)
    out[r0:r1, c0:c1] = kept
    return out, float(jump_kept)


def _gray(input_gray: np.ndarray) -> np.ndarray:
    x = np.asarray(input_gray)
    if x.ndim == 3:
        x = np.asarray(Image.fromarray(np.ascontiguousarray(x)).convert("L"))
    if x.ndim != 2 or x.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 image, got shape {x.shape} dtype {x.dtype}")
    return x


def _ramp(v, lo: float, hi: float):
    """0 at or below lo, 1 at or above hi, linear between."""
    return np.clip((np.asarray(v, np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def detect_regions(
    input_gray: np.ndarray,
    *,
    min_area: float = MIN_AREA,
    max_thin: float = MAX_THIN,
    step: int = 3,
    ratio: float = 2.0,
    values: tuple[int, int] = (0, 255),
) -> DetectionReport:
    """Find every damaged region from the damaged input alone.

    Candidates are the 4-connected sets of pixels of one exact value covering at least half of
    ``min_area`` of the image. Each is measured by

    - thinness: border pixels per sqrt(area), ``(1 - compactness) * sqrt(area)`` where compactness
      is the share of its pixels whose four neighbours are in it too (solid shapes are compact,
      one-value lines and bands are not), and
    - jump: the share of its border edges (p inside, q just outside, q2 one further out) where the
      gray jumps: ``|x[q] - v| > step`` and ``> ratio * |x[q2] - x[q]|``. At the damage border the
      photo restarts at an unrelated level and then varies smoothly; at the edge of a natural flat area
      (a blown-out sky, a crushed shadow, even a contrast-stretched one) the gray ramps into it, so
      the next step outward is as large as the first. An edge between two candidates is credited to
      the one whose other edges jump more (see the module doc).

    The best few candidates with a weak jump (< 0.5) are checked for a merge with natural pixels of
    the same value and split (see the module doc). Then, with the jump thresholds of the region's value
    (``JUMP_STRONG``/``JUMP_WEAK``, or the stricter ``*_CLIPPED`` ones for 0 and 255, where clipping
    makes natural flat areas):

    - every candidate with area >= ``min_area``, thinness <= ``max_thin`` and a strong jump is damage;
    - if there is none, the best-scoring one with more than a weak jump (and the area and thinness) is
      taken, with a lower confidence: a missed region is worse than a recoloured flat area;
    - nothing else. An image without such a region is ``undamaged`` and its mask is empty.

    Candidates are ranked by ``sqrt(area) * compactness**2 * jump**4`` (the first region is the best).

    input_gray: HxW uint8 (an HxWx3 input is grayed with Pillow first).
    values:     inclusive range of fill values to consider (DACON fills seen: 0 to ~100; the default
                considers all).
    About 10-20 ms for 512x512 (one labelling pass and a few vectorised passes; a split adds a few ms).
    """
    x = _gray(input_gray)
    h, w = x.shape
    total = h * w
    # Label 4-connected sets of equal value in one pass (labels 1..n; background=-1 never occurs).
    lab = _label(x.astype(np.int16), background=-1, connectivity=1)
    n = int(lab.max())
    size = np.bincount(lab.ravel(), minlength=n + 1)
    value_of = np.zeros(n + 1, np.int64)
    value_of[lab.ravel()] = x.ravel()

    ok = (value_of >= values[0]) & (value_of <= values[1])
    ok[0] = False
    cand = np.nonzero(ok & (size >= max(2, 0.5 * min_area * total)))[0]
    if cand.size == 0:
        return DetectionReport(np.zeros((h, w), bool), (), (), 1.0, undamaged=True, unsure=False)

    k = cand.size
    lut = np.zeros(n + 1, np.int32)
    lut[cand] = np.arange(1, k + 1)
    which = lut[lab]
    edges, jumps, own_share = _border_stats(x, lab, which, k, step, ratio)
    inner = lab[1:-1, 1:-1]
    interior = (inner == lab[:-2, 1:-1]) & (inner == lab[2:, 1:-1]) & (inner == lab[1:-1, :-2]) & (inner == lab[1:-1, 2:])
    n_interior = np.bincount(which[1:-1, 1:-1][interior], minlength=k + 1)

    area = size[cand].astype(np.float64)
    jump = jumps[1:] / np.maximum(edges[1:], 1)
    compact = n_interior[1:] / size[cand]
    score = np.sqrt(area) * compact**2 * jump**4

    # Merged with a natural flat area of the same value? Try to cut it off the best few weak ones.
    masks: dict[int, np.ndarray] = {}
    for i in np.argsort(score, kind="stable")[::-1][:_SPLIT_TRIES]:
        if jump[i] >= _SPLIT_BELOW or jumps[i + 1] < 8:
            continue
        stronger = (which > 0) & (own_share[which] > own_share[i + 1])
        found = _split(x, lab == cand[i], step, ratio, ignore=stronger)
        if found is None:
            continue
        masks[i], jump[i] = found
        area[i], compact[i] = masks[i].sum(), _compactness(masks[i])
        score[i] = np.sqrt(area[i]) * compact[i] ** 2 * jump[i] ** 4

    clipped = np.isin(value_of[cand], CLIPPED_VALUES)
    strong = np.where(clipped, JUMP_STRONG_CLIPPED, JUMP_STRONG)
    weak = np.where(clipped, JUMP_WEAK_CLIPPED, JUMP_WEAK)
    thin = (1.0 - compact) * np.sqrt(area)
    enough = edges[1:] >= _MIN_EDGES
    evidence = (_ramp(area / total, 0.5 * min_area, min_area) * (1.0 - _ramp(thin, max_thin, 2.0 * max_thin))
                * np.clip((jump - weak) / (strong - weak), 0.0, 1.0) * enough)
    big = (area >= min_area * total) & (thin <= max_thin) & enough
    order = np.argsort(score, kind="stable")[::-1]
    taken = []
    for i in order:
        # A piece cut off a larger flat area (split) is taken only as the best region: as an extra
        # one it is more often a sharp-edged natural shadow than a second damage.
        if big[i] and jump[i] >= strong[i] and (i not in masks or not taken):
            taken.append(i)
    if not taken:
        taken = [i for i in order if big[i] and jump[i] > weak[i]][:1]
    chosen = set(taken)
    # Left out, nearest misses first (then by score): the ones worth a look.
    left = sorted((i for i in order if i not in chosen), key=lambda i: (-evidence[i], -score[i]))

    def region(i, m):
        return Region(value=int(value_of[cand[i]]), area=int(area[i]), jump=float(jump[i]),
                      compactness=float(compact[i]), score=float(score[i]), evidence=float(evidence[i]),
                      bbox=_bbox(m), split=i in masks)

    mask = np.zeros((h, w), bool)
    regions = []
    for i in taken:
        m = masks[i] if i in masks else lab == cand[i]
        mask |= m
        regions.append(region(i, m))
    rejected = tuple(region(i, masks[i] if i in masks else lab == cand[i]) for i in left[:5])

    weakest = min((r.evidence for r in regions), default=1.0)
    near_miss = max((float(evidence[i]) for i in left), default=0.0)
    confidence = float(min(weakest, 1.0 - near_miss))
    reasons = []
    if confidence < UNSURE_BELOW:
        reasons += [f"fill {r.value} region ({r.area / total:.1%} of the image) jumps on only {r.jump:.0%} of its "
                    f"border" for r in regions if r.evidence <= confidence]
        reasons += [f"left out a fill {r.value} region ({r.area / total:.1%} of the image, jump {r.jump:.0%}, "
                    f"compactness {r.compactness:.2f}{', cut off a larger flat area' if r.split else ''})"
                    for r in rejected if 1.0 - r.evidence <= confidence]
    return DetectionReport(mask, tuple(regions), rejected, confidence, undamaged=not regions,
                           unsure=confidence < UNSURE_BELOW, reasons=tuple(reasons))


def detect_mask(
    input_gray: np.ndarray,
    min_area: float = MIN_AREA,
    step: int = 3,
    ratio: float = 2.0,
    values: tuple[int, int] = (0, 255),
    return_info: bool = False,
):
    """HxW bool: the union of every damaged region :func:`detect_regions` finds (all False when it
    finds none, e.g. an undamaged or a flat image).

    With ``return_info=True`` returns ``(mask, Detection)``, the Detection describing the best region
    (the full report is :func:`detect_regions`).
    """
    report = detect_regions(input_gray, min_area=min_area, step=step, ratio=ratio, values=values)
    if not return_info:
        return report.mask
    cands = sorted(report.regions + report.rejected, key=lambda r: -r.score)
    top = tuple((r.value, r.area, r.jump, r.compactness, r.score) for r in cands[:5])
    if report.undamaged:
        return report.mask, Detection(value=-1, area=0, jump=0.0, compactness=0.0, score=0.0,
                                      confidence=report.confidence, candidates=top)
    best = report.regions[0]
    return report.mask, Detection(value=best.value, area=best.area, jump=best.jump, compactness=best.compactness,
                                  score=best.score, confidence=report.confidence, split=best.split, candidates=top)


def summarize(reports, max_names: int = 10) -> str:
    """One line over many images' reports (a mapping name -> DetectionReport), naming the images to
    look at, e.g. ``mask detection, 100 inputs: 97 one region, 2 several regions, 1 undamaged
    (TEST_007.png); 2 unsure (TEST_003.png, TEST_041.png)``."""

    def names(sel):
        shown = ", ".join(sel[:max_names])
        return f" ({shown}{f' and {len(sel) - max_names} more' if len(sel) > max_names else ''})" if sel else ""

    one = sum(len(r.regions) == 1 for r in reports.values())
    several = sum(len(r.regions) > 1 for r in reports.values())
    undamaged = [n for n, r in reports.items() if r.undamaged]
    unsure = [n for n, r in reports.items() if r.unsure]
    parts = [f"{one} one region"] + ([f"{several} several regions"] if several else [])
    if undamaged:
        parts.append(f"{len(undamaged)} undamaged{names(undamaged)}")
    return (f"mask detection, {len(reports)} inputs: " + ", ".join(parts) + "; "
            + (f"{len(unsure)} unsure{names(unsure)}" if unsure else "none unsure"))
