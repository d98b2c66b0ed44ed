"""Pictures: PNG grids of masks, samples and real images (the central axial slice of 3D volumes, or its three
central planes), curves and densities."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _view(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, *spatial) -> 2D array shown upright: channel 0, central slice of the last axis if 3D."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)[0]
    if a.ndim == 3:
        a = a[..., a.shape[-1] // 2]
    return np.rot90(a)  # RAS (x right, y anterior) -> anterior up


def orthogonal_planes(volume: torch.Tensor) -> list[torch.Tensor]:
    """A volume (C, X, Y, Z), RAS -> its central axial (C, X, Y), coronal (C, X, Z) and sagittal (C, Y, Z) planes,
    each drawn by ``save_grid`` with anterior, or superior, up."""
    x, y, z = (n // 2 for n in volume.shape[1:])
    return [volume[..., z], volume[:, :, y], volume[:, x]]


def save_grid(
    path: str,
    rows: Sequence[tuple[str, Sequence]],
    titles: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
    num_labels: int = 4,
    max_columns: int = 8,
) -> str:
    """Saves a grid with one column per case and one row per named list of images, wrapped into blocks of at
    most ``max_columns`` cases.

    Args:
        path: PNG file to write.
        rows: (name, images) pairs; a row named "mask" is drawn as labels, the others as grey images. Each image is
            (C, *spatial).
        value_range: the grey window of every image; None: each image's own 0.5-99.5 percentiles, as a viewer
            windows it (so images in other units are not drawn black).
        titles: optional column titles (e.g. class names).
    """
    n = max(len(images) for _, images in rows)
    columns, blocks = min(n, max_columns), -(-n // max_columns)
    fig, axes = plt.subplots(
        blocks * len(rows), columns, figsize=(1.6 * columns, 1.7 * blocks * len(rows)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, images) in enumerate(rows):
        for i, image in enumerate(images):
            ax = axes[(i // columns) * len(rows) + r][i % columns]
            if name == "mask":
                ax.imshow(_view(image), cmap="viridis", vmin=0, vmax=max(num_labels - 1, 1), interpolation="nearest")
            else:
                view = _view(image)
                lo, hi = value_range or np.percentile(view, (0.5, 99.5))
                ax.imshow(view, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
            label = [name] if i % columns == 0 else []
            if r == 0 and titles:
                label.append(str(titles[i]))
            if label:
                ax.set_title("  ".join(label), fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curve(path: str, points: Sequence[Sequence[float]], xlabel: str, ylabel: str, title: str = "") -> str:
    """A line plot of (x, y) points, saved as PNG."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if len(points):
        x, y = zip(*points)
        ax.plot(x, y, marker=".")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_density(path: str, samples: dict[str, np.ndarray], xlabel: str, grid: np.ndarray) -> str:
    """Gaussian kernel density estimates of 1D ``samples`` (name -> values) over ``grid``, one line each, saved as
    PNG (as MOTFM's Figure 3 compares real and generated intensities)."""
    from scipy.stats import gaussian_kde

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in samples.items():
        ax.plot(grid, gaussian_kde(values)(grid), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
