"""Image-set metrics that run offline: distribution, diversity, paired and mask-consistency metrics.

All take images on the model's grid and intensity range, (N, 1, *spatial) in [-1, 1]; structural similarity is
computed on [0, 1] (the non-negative range its formula is meant for).
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import torch
from monai.metrics import DiceMetric, MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from scipy.stats import wasserstein_distance

DATA_RANGE = 2.0  # the model's intensities span [-1, 1]


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images + 1) / 2


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # MONAI's (and Wang et al.'s) five scales


def mmd(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Unbiased squared maximum mean discrepancy, linear kernel, between equally many real images x and generated
    images y (N, 1, *spatial): the mean over i != j of (x_i - y_i) . (x_j - y_j) (Gretton et al. 2012, Lemma 6).

    Its expectation is |mean(x) - mean(y)|^2 even when y_i was generated from x_i's mask or class. MONAI's
    ``MMDMetric`` (Eq. 3 there) also counts the pairs x_i . y_i, which assumes the sets independent: on paired sets
    it falls far below zero.
    """
    n = min(len(real), len(generated))
    if n < 2:
        raise ValueError(f"MMD needs at least two images in each set, got {len(real)} and {len(generated)}")
    d = (real[:n] - generated[:n]).flatten(1).double()
    k = d @ d.T
    return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))


def intensity_values(images: torch.Tensor) -> np.ndarray:
    """All intensities of a set of images, flattened."""
    return images.detach().cpu().numpy().ravel()


def hist_wasserstein(real: torch.Tensor, generated: torch.Tensor) -> float:
    """1-D Wasserstein (earth mover's) distance between the two sets' intensity distributions."""
    return float(wasserstein_distance(intensity_values(real), intensity_values(generated)))


def _ms_ssim(spatial_dims: int, size: int, kernel_size: int = 7) -> MultiScaleSSIMMetric:
    """MS-SSIM with as many of the five standard scales as an image of ``size`` allows (weights renormalised)."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size // 2**scales > kernel_size - 1:
        scales += 1
    weights = MS_SSIM_WEIGHTS[:scales]
    weights = tuple(w / sum(weights) for w in weights)
    return MultiScaleSSIMMetric(spatial_dims, data_range=1.0, kernel_size=kernel_size, weights=weights)


def ms_ssim_diversity(images: torch.Tensor, max_pairs: int = 500, seed: int = 0) -> float | None:
    """Mean pairwise MS-SSIM within a set (lower = more diverse); None for fewer than two images.

    Up to ``max_pairs`` pairs, drawn at random (seeded) when there are more.
    """
    pairs = list(itertools.combinations(range(len(images)), 2))
    if not pairs:
        return None
    if len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    metric = _ms_ssim(images.dim() - 2, min(images.shape[2:]))
    first, second = (torch.stack([images[p[k]] for p in pairs]) for k in (0, 1))
    return float(metric(_unit(first), _unit(second)).mean())


def ssim_paired(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean SSIM of each generated image against its real counterpart."""
    return float(SSIMMetric(real.dim() - 2, data_range=1.0)(_unit(generated), _unit(real)).mean())


def psnr_paired(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean PSNR (dB) of each generated image against its real counterpart; identical images give inf."""
    values = PSNRMetric(max_val=DATA_RANGE, reduction="none")(generated, real).flatten()
    return float(values.mean()) if torch.isfinite(values).all() else math.inf


def mask_dice(masks: torch.Tensor, predicted: torch.Tensor, num_labels: int) -> float:
    """Mean Dice over the foreground labels between label maps (N, 1, *spatial) and predicted label maps."""

    def onehot(labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels[:, 0].long(), num_labels).movedim(-1, 1)

    dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    per_label = dice(onehot(predicted), onehot(masks))
    return float(per_label[torch.isfinite(per_label)].mean())
