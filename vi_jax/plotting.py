"""Figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def image_grid(images: np.ndarray, image_shape: tuple[int, int], num_cols: int, title: str = ""):
    """A figure tiling rows of `images` [N, H*W] (values in [0, 1]) as H x W grey images."""
    images = np.asarray(images)
    num_rows = int(np.ceil(len(images) / num_cols))
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(num_cols, num_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image in zip(axes.ravel(), images):
        ax.imshow(image.reshape(image_shape), cmap="gray_r", vmin=0.0, vmax=1.0)
    if title:
        fig.suptitle(title)
    return fig


def close(fig) -> None:
    plt.close(fig)
