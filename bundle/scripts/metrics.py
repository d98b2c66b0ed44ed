"""Image-set metrics that run offline: distribution, diversity, paired and mask-consistency metrics.

All take images on the model's grid and intensity range, (N, 1, *spatial) in [-1, 1]; structural similarity is
computed on [0, 1] (the non-negative range its formula is meant for).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import DiceMetric, MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from scipy.stats import wasserstein_distance

DATA_RANGE = 2.0  # the model's intensities span [-1, 1]


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images + 1) / 2


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # MONAI's (and Wang et al.'s) five scales


KERNELS = ("linear", "polynomial")


def _kernel(a: torch.Tensor, b: torch.Tensor, kernel: str) -> torch.Tensor:
    """Kernel matrix between rows of a (N, D) and b (M, D): linear a.b, or KID's cubic (a.b / D + 1)^3."""
    if kernel == "linear":
        return a @ b.T
    if kernel == "polynomial":
        return (a @ b.T / a.shape[1] + 1) ** 3
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def mmd(real: torch.Tensor, generated: torch.Tensor, kernel: str = "linear") -> float:
    """Unbiased squared maximum mean discrepancy between equally many real x and generated y samples (N, ...):
    the mean over i != j of k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i) (Gretton et al. 2012, Lemma 6).

    The linear kernel on images gives |mean(x) - mean(y)|^2 in expectation; the cubic polynomial kernel on
    features is the kernel of KID (Binkowski et al. 2018). Pairs x_i, y_i never meet, so the statistic stays
    unbiased when y_i was generated from x_i's mask or class; MONAI's ``MMDMetric`` (Eq. 3 there) counts them,
    which assumes independent sets: on paired sets it falls far below zero.
    """
    n = min(len(real), len(generated))
    if n < 2:
        raise ValueError(f"MMD needs at least two samples in each set, got {len(real)} and {len(generated)}")
    x, y = real[:n].flatten(1).double(), generated[:n].flatten(1).double()
    h = _kernel(x, x, kernel) + _kernel(y, y, kernel) - _kernel(x, y, kernel) - _kernel(y, x, kernel)
    return float((h.sum() - h.diagonal().sum()) / (n * (n - 1)))


def frechet_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D): |mu1 - mu2|^2 + tr(S1) + tr(S2) -
    2 tr((S1 S2)^1/2), with tr((S1 S2)^1/2) = sum of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2
    (symmetric, so two eigendecompositions give it exactly, also for the singular covariances of sets smaller
    than the feature dimension, where MONAI's ``FIDMetric`` and ``scipy.linalg.sqrtm`` fail or crawl)."""
    if min(len(real), len(generated)) < 2:
        raise ValueError(f"a Frechet distance needs two samples in each set, got {len(real)} and {len(generated)}")
    a, b = real.double().numpy(), generated.double().numpy()
    mu = a.mean(0) - b.mean(0)
    s1, s2 = (np.atleast_2d(np.cov(x, rowvar=False)) for x in (a, b))
    values, vectors = np.linalg.eigh(s1)
    root1 = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = root1 @ s2 @ root1
    cross = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    return float(mu @ mu + np.trace(s1) + np.trace(s2) - 2 * cross)


def bootstrap_ci(
    statistic: Callable[[torch.Tensor], float],
    n: int,
    draws: int = 200,
    seed: int = 0,
    level: float = 0.95,
    centre: float | None = None,
) -> list[float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` cases resampled with replacement.

    With ``centre`` (the statistic on all cases), the replicates are first shifted by their bias, mean - ``centre``.
    That is for set statistics (Frechet distance, MMD, KID): a resample holds only about 63% distinct cases, which
    raises a Frechet distance's small-sample bias, and a repeated case meets itself in MMD's within-set sums, so the
    plain interval sits above the value on all cases, at times wholly. The shifted one keeps the replicates' spread.
    """
    if n == 0:
        return [math.nan, math.nan]
    g = torch.Generator().manual_seed(seed)
    values = np.array([statistic(torch.randint(0, n, (n,), generator=g)) for _ in range(draws)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return [math.nan, math.nan]
    if centre is not None:
        values += centre - values.mean()
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def mean_with_ci(per_case: torch.Tensor, draws: int = 200) -> tuple[float, list[float]]:
    """The mean of per-case values (N,), nan ones left out, and its bootstrap interval over those cases (nan where
    none is left)."""
    values = per_case[~torch.isnan(per_case)].double()
    return float(values.mean()) if len(values) else math.nan, bootstrap_ci(
        lambda i: float(values[i].mean()), len(values), draws
    )


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


def conditional_ms_ssim(groups: torch.Tensor) -> torch.Tensor:
    """Per condition, the mean pairwise MS-SSIM among its K samples: groups (N, K, 1, *spatial) -> (N,).
    1 means every noise gives the same image (collapse); lower is more diverse."""
    n, k = groups.shape[:2]
    pairs = list(itertools.combinations(range(k), 2))
    metric = _ms_ssim(groups.dim() - 3, min(groups.shape[3:]))
    first = torch.cat([groups[:, i] for i, _ in pairs])
    second = torch.cat([groups[:, j] for _, j in pairs])
    return metric(_unit(first), _unit(second)).view(len(pairs), n).mean(0)


def ssim_per_case(real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """SSIM of each generated image against its real counterpart: (N,)."""
    return SSIMMetric(real.dim() - 2, data_range=1.0, reduction="none")(_unit(generated), _unit(real)).view(-1)


def psnr_per_case(real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each generated image against its real counterpart: (N,); identical images give inf."""
    return PSNRMetric(max_val=DATA_RANGE, reduction="none")(generated, real).view(-1)


def correlation_per_case(real: torch.Tensor, generated: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each generated image with its real counterpart inside its mask's foreground
    (label > 0): (N,). It ignores global gain and offset, so it measures whether the image follows the anatomy."""
    out = []
    for x, y, m in zip(real, generated, masks):
        inside = m[0] > 0
        a, b = x[0][inside].double(), y[0][inside].double()
        a, b = a - a.mean(), b - b.mean()
        out.append(float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12)))
    return torch.tensor(out)


def dice_per_case(masks: torch.Tensor, predicted: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Mean Dice over the foreground labels present, per case, between label maps (N, 1, *spatial): (N,)."""

    def onehot(labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels[:, 0].long(), num_labels).movedim(-1, 1)

    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    per_label = dice(onehot(predicted), onehot(masks))
    return torch.nanmean(per_label, dim=1)


def mask_dice(masks: torch.Tensor, predicted: torch.Tensor, num_labels: int) -> float:
    """Mean foreground Dice over cases (see ``dice_per_case``)."""
    return float(torch.nanmean(dice_per_case(masks, predicted, num_labels)))


def interplane_ratio(volume: torch.Tensor, axis: int = -1) -> float:
    """Inter-plane consistency of a volume (*spatial) with three spatial axes: the mean |second difference| along
    the stack ``axis`` over the mean of the two in-plane axes' mean |second difference|.

    The second difference along an axis, x[k+1] - 2 x[k] + x[k-1], is zero wherever the image is locally linear
    and large where planes disagree, so a stack of independently made planes (streaked reformats) scores far above
    its real counterpart. Each mean runs over the whole volume (the background is flat in both directions and
    dilutes both means alike). The axes' spacings may differ (planes a few mm apart, finer pixels): compare a
    volume's ratio with the real volume's on the same grid, not with 1. A flat volume gives nan.
    """
    if volume.dim() != 3 or volume.shape[axis] < 3:
        raise ValueError(f"a volume of three axes with three or more planes is needed, got shape {tuple(volume.shape)}")
    x = volume.double()
    axis = axis % 3

    def curvature(a: int) -> float:
        return float(x.diff(n=2, dim=a).abs().mean())

    in_plane = sum(curvature(a) for a in range(3) if a != axis) / 2
    return curvature(axis) / in_plane if in_plane > 0 else math.nan


def hf_power_ratio(real: torch.Tensor, generated: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Per case, the generated image's spectral power above ``cutoff`` cycles per pixel (radial frequency; Nyquist
    is 0.5) over its real counterpart's: images (N, C, *spatial) -> (N,). Below 1: detail is lost (blur); above 1:
    more fine texture or noise than the real image has."""
    dims = tuple(range(2, real.dim()))
    axes = torch.meshgrid(*(torch.fft.fftfreq(n) for n in real.shape[2:]), indexing="ij")
    high = torch.stack(axes).pow(2).sum(0).sqrt() > cutoff

    def power(images: torch.Tensor) -> torch.Tensor:
        return torch.fft.fftn(images.double(), dim=dims).abs().pow(2)[:, :, high].sum((1, 2))

    return (power(generated) / power(real)).float()
