"""PCA maps of patch tokens: the first three principal components as RGB beside the slice.

Why PCA over all reference patches at once: one colour space for every person and slice, so
the same colour means the same direction in token space everywhere (the DINO-style map the
BrainDINO paper shows). Components are scaled to [0, 1] by their 1st-99th percentile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def pca_rgb(grids: Sequence[np.ndarray], seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    """(D, h, w) token grids -> one (h, w, 3) RGB map each and the 3 explained-variance ratios."""
    from sklearn.decomposition import PCA

    flat = [g.reshape(g.shape[0], -1).T.astype(np.float64) for g in grids]
    stacked = np.concatenate(flat)
    components = min(3, stacked.shape[1], stacked.shape[0])
    pca = PCA(n_components=components, random_state=seed).fit(stacked)
    projected = pca.transform(stacked)
    if components < 3:
        projected = np.pad(projected, ((0, 0), (0, 3 - components)))
    low, high = np.percentile(projected, [1, 99], axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
    maps, start = [], 0
    for g in grids:
        n = g.shape[1] * g.shape[2]
        maps.append(scaled[start:start + n].reshape(g.shape[1], g.shape[2], 3))
        start += n
    ratios = [float(r) for r in pca.explained_variance_ratio_] + [0.0] * (3 - components)
    return maps, ratios


def pca_figure(slices: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str],
               out: Path, title: str) -> Path:
    """One row per example: the input slice (grey) and its PCA map at the same extent (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(slices)
    fig, axes = plt.subplots(rows, 2, figsize=(5.2, 2.5 * rows + 0.5), squeeze=False)
    try:
        for ax_row, image, rgb, label in zip(axes, slices, maps, titles):
            # arrays are (x, y) as stored (RAS for the phantoms): turn both the same way so
            # anterior is up; the map stays aligned with the slice
            image, rgb = np.rot90(image), np.rot90(rgb, axes=(0, 1))
            extent = (0, image.shape[1], image.shape[0], 0)
            ax_row[0].imshow(image, cmap="gray", extent=extent)
            ax_row[0].set_title(label, fontsize=8)
            ax_row[1].imshow(rgb, interpolation="nearest", extent=extent)
            ax_row[1].set_title("patch tokens: PCA 1-3 as RGB", fontsize=8)
            for ax in ax_row:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.png")
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)
    finally:
        plt.close(fig)
    return out
