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


def manifold(images: np.ndarray, image_shape: tuple[int, int], z_values: np.ndarray, title: str = ""):
    """One canvas tiling n x n images [n*n, H*W] (row-major, as vi_jax.visualize.manifold_latents
    orders them), the axes marked by each coordinate's increasing z values [n]
    (vi_jax.visualize.grid_quantiles; z_1 rightwards, z_2 upwards)."""
    images = np.asarray(images)
    n = len(z_values)
    if len(images) != n * n:
        raise ValueError(f"{len(images)} images do not fill a {n} x {n} grid")
    height, width = image_shape
    canvas = images.reshape(n, n, height, width).transpose(0, 2, 1, 3).reshape(n * height, n * width)
    fig, ax = plt.subplots(figsize=(0.6 * n + 1, 0.6 * n + 1))
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0)
    centres_x = width * (np.arange(n) + 0.5)
    centres_y = height * (np.arange(n) + 0.5)
    labels = [f"{v:.1f}" for v in np.asarray(z_values)]
    ax.set_xticks(centres_x, labels, fontsize=7)
    ax.set_yticks(centres_y, labels[::-1], fontsize=7)
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    if title:
        ax.set_title(title)
    return fig


def training_curves(curves: dict, title: str = ""):
    """Lines of {name: (epochs, values)} (e.g. vi_jax.visualize.history_curves): the per-epoch
    curves as lines, the sparser (evaluation) curves with markers."""
    fig, ax = plt.subplots(figsize=(6, 4))
    longest = max((len(epochs) for epochs, _ in curves.values()), default=0)
    for name, (epochs, values) in curves.items():
        ax.plot(epochs, values, marker=None if len(epochs) == longest else "o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def gap_curves(epochs, splits: dict, names: dict, title: str = ""):
    """One panel per split: each gap's mean against epoch with +-2 standard-error bars.

    splits: {split: {quantity: {"mean": [E], "stderr": [E]}}}; names: {quantity: legend label}."""
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), squeeze=False, sharey=True)
    for ax, (split, quantities) in zip(axes[0], splits.items()):
        for quantity, label in names.items():
            values = quantities[quantity]
            ax.errorbar(epochs, values["mean"], yerr=2 * np.asarray(values["stderr"]), marker="o",
                        capsize=2, label=label)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel("epoch")
        ax.set_title(split)
    axes[0, 0].set_ylabel("nats per datapoint (± 2 s.e.)")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _metric_line(ax, records: list, name: str, label: str, **style) -> bool:
    rows = [(r["epoch"], r[name]) for r in records if name in r]
    if rows:
        ax.plot(*zip(*rows), label=label, **style)
    return bool(rows)


def metrics_curves(runs: dict, title: str = ""):
    """Two panels from the live metrics records (vi_jax.metrics) of one or more runs,
    {label: records}: nats per datapoint (the train ELBO per epoch as a line, the held-out values
    at the evaluations with markers) and the schedule (learning rate on a log scale, the KL
    warm-up weight on the right axis)."""
    fig, (nats, rate) = plt.subplots(1, 2, figsize=(11, 4))
    weight = rate.twinx()
    has_rate = False
    for label, records in runs.items():
        prefix = f"{label}: " if label else ""
        train = [r for r in records if r.get("kind") == "train"]
        evals = [r for r in records if r.get("kind") == "eval"]
        elbo = "train_elbo" if any("train_elbo" in r for r in train) else "elbo"  # VQ-VAE lines say "elbo"
        _metric_line(nats, train, elbo, prefix + "train ELBO")
        for name in sorted({name for r in evals for name in r} - {"kind", "epoch", "seconds"}):
            _metric_line(nats, evals, name, prefix + name, marker="o")
        has_rate |= _metric_line(rate, train, "learning_rate", prefix + "learning rate", drawstyle="steps-post")
        _metric_line(weight, train, "kl_weight", prefix + "KL weight", linestyle="--", color="grey")
    nats.set_xlabel("epoch")
    nats.set_ylabel("nats per datapoint")
    nats.legend(fontsize=8)
    rate.set_xlabel("epoch")
    rate.set_ylabel("learning rate")
    if has_rate:
        rate.set_yscale("log")
    weight.set_ylabel("KL weight")
    weight.set_ylim(0.0, 1.05)
    handles = [h for ax in (rate, weight) for h in ax.get_legend_handles_labels()[0]]
    if handles:
        rate.legend(handles=handles, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
