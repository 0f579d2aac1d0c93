"""Cluster map: the 2-D embedding coloured by cluster, noise in gray, a few thumbnails per large cluster."""
from __future__ import annotations

import os

import numpy as np

from imgrestore.data.io import atomic_path, read_rgb


def _thumbnail(path: str, px: int) -> np.ndarray | None:
    from PIL import Image

    try:
        im = Image.fromarray(read_rgb(path))
    except Exception:  # a thumbnail is decoration: an unreadable file just gets none
        return None
    im.thumbnail((px, px))
    return np.asarray(im)


def plot_cluster_map(embedding: np.ndarray, labels: np.ndarray, path: str | os.PathLike,
                     image_paths: list[str] | None = None, thumbs_per_cluster: int = 3,
                     clusters_with_thumbs: int = 8, thumb_px: int = 40, title: str = "Scene clusters",
                     test_embedding: np.ndarray | None = None) -> str:
    """Write the map as PNG (atomically) and return its path.

    Clusters are coloured (tab20, cycling), noise points gray. For the `clusters_with_thumbs` largest clusters,
    `thumbs_per_cluster` images nearest the cluster's centre in the map are drawn beside it. Test points, if
    given, are black crosses.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    emb = np.asarray(embedding, dtype=float)
    labels = np.asarray(labels).astype(int)
    if emb.ndim != 2 or emb.shape[1] < 2:  # a 1-D map is drawn on a line
        emb = np.column_stack([emb.reshape(len(labels), -1)[:, 0], np.zeros(len(labels))])
    fig, ax = plt.subplots(figsize=(11, 8), dpi=100)
    noise = labels < 0
    ax.scatter(emb[noise, 0], emb[noise, 1], s=8, c="lightgray", label=f"noise ({noise.sum()})", linewidths=0)
    clusters, sizes = np.unique(labels[~noise], return_counts=True)
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(clusters):
        m = labels == c
        ax.scatter(emb[m, 0], emb[m, 1], s=12, color=cmap(i % 20), linewidths=0,
                   label=f"{c} ({m.sum()})" if len(clusters) <= 20 else None)
    if test_embedding is not None and len(test_embedding):
        t = np.asarray(test_embedding, dtype=float)
        ax.scatter(t[:, 0], t[:, 1], s=14, marker="x", c="black", linewidths=0.8, label=f"test ({len(t)})")
    lo, hi = emb.min(0), emb.max(0)
    span = np.maximum(hi - lo, 1e-6)
    ax.set_xlim(lo[0] - 0.12 * span[0], hi[0] + 0.12 * span[0])
    ax.set_ylim(lo[1] - 0.15 * span[1], hi[1] + 0.15 * span[1])
    mid = (lo + hi) / 2
    if image_paths is not None and len(clusters):
        for c in clusters[np.argsort(sizes)[::-1][:clusters_with_thumbs]]:
            idx = np.flatnonzero(labels == c)
            centre = emb[idx].mean(0)
            near = idx[np.argsort(((emb[idx] - centre) ** 2).sum(1))[:thumbs_per_cluster]]
            for j, k in enumerate(near):
                thumb = _thumbnail(image_paths[k], thumb_px)
                if thumb is None:
                    continue
                # a row of thumbnails above or below the cluster (towards the middle of the map), in points
                dx = (thumb_px + 8) * (j - (len(near) - 1) / 2)
                dy = (thumb_px * 0.75 + 12) * (1.0 if centre[1] < mid[1] else -1.0)
                # offsets are from the image's own point: add the point -> cluster centre shift (pixels -> points)
                shift = (ax.transData.transform(centre) - ax.transData.transform(emb[k])) * 72.0 / fig.dpi
                box = AnnotationBbox(OffsetImage(thumb, zoom=72.0 / fig.dpi), emb[k],
                                     xybox=(dx + shift[0], dy + shift[1]), xycoords="data",
                                     boxcoords=("offset points", "offset points"), pad=0.1,
                                     arrowprops=dict(arrowstyle="-", lw=0.5, alpha=0.6))
                ax.add_artist(box)
    ax.set_title(f"{title}: {len(clusters)} clusters, {noise.mean():.0%} noise, {len(labels)} images")
    ax.set_xlabel("map 1")
    ax.set_ylabel("map 2")
    if len(clusters) <= 20 or test_embedding is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=1.5,
                  ncol=2 if len(clusters) > 10 else 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return str(path)
