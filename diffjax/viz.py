"""Viewer-friendly outputs: PNG image grids and 2D sample/trajectory plots."""

from __future__ import annotations

import os

import numpy as np


def image_grid(images, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) images in [−1, 1] → one uint8 (rows·(H+pad), ncol·(W+pad), C) grid."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"image_grid: need (N, H, W, C) images, got shape {images.shape}.")
    n, h, w, c = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i, img in enumerate(np.clip((images + 1) / 2, 0, 1)):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = img
    return (grid * 255).round().astype(np.uint8)


def save_image_grid(path: str, images, ncol: int | None = None, scale: int = 2) -> str:
    """Write an image grid as PNG (nearest-neighbour upscaled by `scale`); returns the path."""
    from PIL import Image

    grid = image_grid(images, ncol)
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def save_samples_2d(path: str, samples, data=None, trajectory=None, title: str = "",
                    n_paths: int = 200, lim: float | None = None) -> str:  # fmt: skip
    """Scatter of 2D samples (and data), with sample trajectories (T, N, 2) if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = np.asarray(samples)
    panels = 1 + (data is not None) + (trajectory is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    i = 0
    if data is not None:
        axes[i].scatter(*np.asarray(data)[:, :2].T, s=1, alpha=0.3, c="tab:gray")
        axes[i].set_title("data")
        i += 1
    axes[i].scatter(*samples[:, :2].T, s=1, alpha=0.3)
    axes[i].set_title("samples")
    if trajectory is not None:
        traj = np.asarray(trajectory)[:, :n_paths]
        ax = axes[i + 1]
        ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.4, alpha=0.5, c="tab:blue")
        ax.scatter(*traj[0].T, s=3, c="tab:gray", label="noise (start)")
        ax.scatter(*traj[-1].T, s=3, c="tab:red", label="sample (end)")
        ax.set_title("trajectories noise → data")
        ax.legend(loc="upper right", fontsize=7)
    for ax in axes:
        ax.set_aspect("equal")
        if lim:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
