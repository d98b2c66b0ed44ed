"""Image-set metrics that run offline: distribution, diversity, paired and mask-consistency metrics.

All take images on the model's grid and intensity range, (N, 1, *spatial) in [-1, 1], 2D or 3D; structural
similarity is computed on [0, 1] (the non-negative range its formula is meant for). The sharpness, texture and
contrast metrics also take the label maps (N, 1, *spatial) that say where the brain is (label > 0; all ones where
there is none) and measure each image scaled by its own brain's median, so a gain between the sets does not count
as blur.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from scipy import ndimage
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
    return _correlation(real, generated, masks > 0)


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


HIGH_FREQUENCY = 0.25  # cycles per pixel: a quarter of the sampling frequency
BRAIN_DILATION = 3  # pixels the brain is dilated by before the spectral window tapers off
TISSUE_RATIOS = ((3, 2), (2, 1))  # label pairs of the contrasts: white/grey matter, grey matter/CSF


def _spatial(x: torch.Tensor, value: float, other: float) -> list[float]:
    """A filter's per-axis size or sigma for images (N, C, *spatial): ``value`` along the spatial axes, ``other``
    (the identity) along N and C."""
    return [other, other] + [value] * (x.dim() - 2)


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each image (N, C, *spatial) smoothed by a Gaussian of ``sigma`` pixels (edges mirrored)."""
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(force=True), _spatial(x, sigma, 0)))


def _sum(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N,): the sum over all but the first axis."""
    return x.flatten(1).sum(1)


def _brain_mean(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """The mean of each image (N, C, *spatial) over its weights or mask ``inside`` (same shape): (N,)."""
    return _sum(x * inside) / _sum(inside.to(x.dtype))


def _centred(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, *spatial) less its mean over ``inside`` (see ``_brain_mean``)."""
    return x - _brain_mean(x, inside).view(-1, *[1] * (x.dim() - 1))


def _correlation(a: torch.Tensor, b: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of a with b (N, C, *spatial) over each image's pixels ``inside`` (bool): (N,)."""
    a, b = _centred(a.double(), inside) * inside, _centred(b.double(), inside) * inside
    return _sum(a * b) / (_sum(a * a) * _sum(b * b)).sqrt().clamp(min=1e-12)


def scaled_in_brain(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each image (N, 1, *spatial) taken from [-1, 1] to [0, 1] (0: the data's background) and divided by the median
    over its brain (label > 0): (N, 1, *spatial), float64. A gain between the sets then does not count as blur; the
    median, unlike an outer percentile such as p99.5, barely moves with texture or noise, whose tails would scale a
    textured image down."""
    x = _unit(images).double()
    medians = torch.stack([image[m > 0].median() for image, m in zip(x, masks)])
    return x / medians.clamp(min=1e-6).view(-1, *[1] * (x.dim() - 1))


def brain_window(masks: torch.Tensor, dilation: int = BRAIN_DILATION) -> torch.Tensor:
    """The spectral window of label maps (N, 1, *spatial): the brain (label > 0) dilated by ``dilation`` pixels and
    smoothed by a Hann kernel as wide, so that it is 1 on the brain and falls smoothly to 0 within 2 x ``dilation``
    pixels outside it; a hard cut at the mask's edge would put power at every frequency. (N, 1, *spatial) in [0, 1]."""
    hann = np.hanning(2 * dilation + 3)[1:-1]
    brain = (masks > 0).numpy(force=True).astype(np.float64)
    window = ndimage.maximum_filter(brain, _spatial(masks, 2 * dilation + 1, 1))
    for axis in range(2, masks.dim()):
        window = ndimage.convolve1d(window, hann / hann.sum(), axis, mode="constant")
    return torch.from_numpy(window)


def _windowed_power(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The power spectrum of each image (N, 1, *spatial), brain-scaled, less its windowed mean, times its brain
    window, per unit of window energy: (N, P) at P frequencies, and their radial frequency in cycles/pixel (P,)."""
    dims = tuple(range(2, images.dim()))
    window = brain_window(masks)
    x = scaled_in_brain(images, masks)
    x = _centred(x, window) * window
    power = torch.fft.fftn(x, dim=dims).abs().square().flatten(1) / _sum(window.square())[:, None]
    axes = torch.meshgrid(*[torch.fft.fftfreq(images.shape[d], dtype=torch.float64) for d in dims], indexing="ij")
    return power, torch.stack(axes).square().sum(0).sqrt().flatten()


def radial_power_spectra(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectra of images (N, 1, *spatial) inside their brain window (see
    ``_windowed_power``): (N, B) mean power in rings one frequency step (1 / the shortest side) wide from that step
    to 0.5 cycles/pixel, and the rings' frequencies (B,)."""
    power, radius = _windowed_power(images, masks)
    size = min(images.shape[2:])
    ring = (radius * size).round().long()
    keep = (ring >= 1) & (ring <= size // 2)
    sums = torch.zeros(len(power), size // 2 + 1, dtype=power.dtype).index_add_(1, ring[keep], power[:, keep])
    counts = torch.bincount(ring[keep], minlength=size // 2 + 1)
    return sums[:, 1:] / counts[1:], torch.arange(1, size // 2 + 1, dtype=torch.float64) / size


def log_spectral_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """RMS difference over frequencies of the log10 mean radial spectra of two sets, (N, B) and (M, B) from
    ``radial_power_spectra``: 0 for equal spectra, 0.1 for a power 26% off at every frequency."""
    return float((generated.mean(0).log10() - real.mean(0).log10()).square().mean().sqrt())


def high_frequency_power(images: torch.Tensor, masks: torch.Tensor, cutoff: float = HIGH_FREQUENCY) -> torch.Tensor:
    """Mean power above ``cutoff`` cycles/pixel (radial frequency) of each image (N, 1, *spatial) inside its brain
    window (see ``_windowed_power``): (N,). A blurred image keeps less of it."""
    power, radius = _windowed_power(images, masks)
    return power[:, radius > cutoff].mean(1)


def gradient_magnitude(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude (central differences, per pixel) over the brain (label > 0) of each image
    (N, 1, *spatial) scaled by its brain's median (``scaled_in_brain``): (N,)."""
    x = scaled_in_brain(images, masks)
    magnitude = torch.stack(torch.gradient(x, dim=tuple(range(2, x.dim())))).square().sum(0).sqrt()
    return _brain_mean(magnitude, masks > 0)


def tissue_log_ratios(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Log ratios of tissue mean intensities, ``TISSUE_RATIOS`` (white/grey matter, grey matter/CSF), of images
    (N, 1, *spatial) taken from [-1, 1] to [0, 1], where 0 is the data's background, so the ratios are the data's
    contrasts (and ignore a gain): (N, 2); nan where a tissue is absent."""
    x = _unit(images).double()
    means = {k: _brain_mean(x, masks == k) for k in {k for pair in TISSUE_RATIOS for k in pair}}
    return torch.stack([means[a].clamp(min=1e-3).log() - means[b].clamp(min=1e-3).log() for a, b in TISSUE_RATIOS], 1)


def contrast_spread(log_ratios: torch.Tensor) -> torch.Tensor:
    """Contrast diversity of images: log ratios (..., K, R) of K images -> (...,), their standard deviation over the
    K images averaged over the R ratios (nan ones left out); 0 when every image has the same contrasts."""
    return log_ratios.std(-2).nanmean(-1)


def subject_means(values: torch.Tensor, subjects: Sequence) -> torch.Tensor:
    """Per-case values (N, ...) -> each subject's mean over its cases (S, ...), nan values left out, subjects in the
    order they first appear in ``subjects`` (N names)."""
    names = list(dict.fromkeys(subjects))
    return torch.stack([values[[i for i, s in enumerate(subjects) if s == name]].nanmean(0) for name in names])


def _lagged_correlation(x: torch.Tensor, inside: torch.Tensor, lag: int) -> torch.Tensor:
    """Correlation of each image (N, 1, *spatial) with itself ``lag`` pixels on, over pixel pairs both ``inside``,
    averaged over the spatial axes: (N,)."""
    out = []
    for d in range(2, x.dim()):
        n = x.shape[d] - lag
        both = inside.narrow(d, 0, n) & inside.narrow(d, lag, n)
        out.append(_correlation(x.narrow(d, 0, n), x.narrow(d, lag, n), both))
    return torch.stack(out).mean(0)


def _coherence(x: torch.Tensor, inside: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Mean gradient-orientation coherence over the brain of images (N, 1, *spatial): (N,). The coherence is the
    fractional anisotropy of the structure tensor J (gradient outer products smoothed by ``sigma`` pixels),
    sqrt(d / (d - 1)) |J - tr(J) I / d| / |J| (Frobenius norms, d spatial axes): 1 where the gradients of a
    neighbourhood all point one way (an edge), lower where they point every way (texture, noise)."""
    dims = tuple(range(2, x.dim()))
    gradients = torch.gradient(x, dim=dims)
    tensor = torch.stack([torch.stack([_gaussian(a * b, sigma) for b in gradients], -1) for a in gradients], -1)
    trace = tensor.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    deviator = tensor - torch.diag_embed(trace.expand(*trace.shape[:-1], len(dims))) / len(dims)
    norm = tensor.flatten(-2).norm(dim=-1).clamp(min=1e-12)
    return _brain_mean(math.sqrt(len(dims) / (len(dims) - 1)) * deviator.flatten(-2).norm(dim=-1) / norm, inside)


def texture_features(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Classical texture statistics of each image (N, 1, *spatial) over its brain (label > 0), scaled by its brain's
    median (``scaled_in_brain``): (N, 4 L + 1).

    The image is split into L difference-of-Gaussians bands, band l = G(s_l) x - G(s_(l+1)) x with s = 0, 1, 2, 4..
    pixels (L = log2(shortest side) - 3, at least 1); per band: its energy (log variance), the log of its kurtosis
    (sparse edges against dense texture), its correlation with itself 2^l pixels on (the band's grain), and the
    correlation of its local energy (band^2) 2^(l+1) pixels on (whether detail comes in patches); plus the mean
    gradient-orientation coherence of the structure tensor. Blur lowers the fine bands' energy and raises their
    correlations; a mean of several images lowers energy and kurtosis: neither is a change of anatomy, which the
    segmenter's features are trained to see.
    """
    levels = max(1, int(math.log2(min(images.shape[2:]))) - 3)
    x = scaled_in_brain(images, masks)
    inside = masks > 0
    smoothed = [x] + [_gaussian(x, 2.0**level) for level in range(levels)]
    features = []
    for level in range(levels):
        band = smoothed[level] - smoothed[level + 1]
        centred = _centred(band, inside)
        variance = _brain_mean(centred.square(), inside).clamp(min=1e-12)
        features += [
            variance.log(),
            (_brain_mean(centred**4, inside) / variance.square()).clamp(min=1e-12).log(),
            _lagged_correlation(band, inside, 2**level),
            _lagged_correlation(band.square(), inside, 2 ** (level + 1)),
        ]
    features.append(_coherence(x, inside))
    return torch.stack(features, 1).float()


def standardised(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Features (N, F) in units of a reference set's (M, F) per-feature mean and standard deviation, so that no
    statistic weighs in a Frechet distance or KID by its units."""
    return (features - reference.mean(0)) / reference.std(0).clamp(min=1e-6)
