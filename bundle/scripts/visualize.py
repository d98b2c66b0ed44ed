"""Pictures: PNG grids of masks, samples and real images (the central axial slice of 3D volumes)."""

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


def save_grid(
    path: str,
    rows: Sequence[tuple[str, Sequence]],
    titles: Sequence[str] | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    num_labels: int = 4,
) -> str:
    """Saves a grid with one column per case and one row per named list of images.

    Args:
        path: PNG file to write.
        rows: (name, images) pairs; a row named "mask" is drawn as labels, the others as grey images in
            ``value_range``. Each image is (C, *spatial).
        titles: optional column titles (e.g. class names).
    """
    n = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(images):
                continue
            if name == "mask":
                ax.imshow(
                    _view(images[c]), cmap="viridis", vmin=0, vmax=max(num_labels - 1, 1), interpolation="nearest"
                )
            else:
                ax.imshow(_view(images[c]), cmap="gray", vmin=value_range[0], vmax=value_range[1])
            if c == 0:
                ax.set_title(name, fontsize=8, loc="left")
            elif r == 0 and titles:
                ax.set_title(titles[c], fontsize=7)
        if r == 0 and titles:
            axes[0][0].set_title(f"{name}  {titles[0]}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
