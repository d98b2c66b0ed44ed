"""Denoising with the flow, and its benchmark.

A noisy image is a point on the path: for x_t = (1 - t) x0 + t x1, an image with Gaussian noise of std sigma (in
the model's [-1, 1] units) is x_t / t at t = 1 / (1 + sigma), so the rest of the path removes the noise.

``Denoiser`` is the one denoising policy. The bundle's ``denoise.json`` (its workflow and its benchmark) and the
deploy app's denoising operator all call it, on one series at a time (the planes of a DICOM series, a 3D volume, or
a single image as a series of one):

1. the series is scaled from its own robust range, the 0.5-99.5 percentiles of its pixels on their own grid
   (resampling to the model's grid blurs and pads), to [-1, 1] (clipped), so that images in any units (HU,
   another scanner's scale) reach the model alike;
2. one noise std is estimated for the series: the median over its images of the wavelet estimate;
3. the flow starts at t = 1 / (1 + sigma) and ``FlowSampler.denoise`` integrates to t = 1;
4. the result is scaled back from [-1, 1] to the series' range: the input's units.

``DenoisingBenchmark`` adds noise to clean series and scores the policy against non-local means.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import ScaleIntensityRange
from skimage.restoration import denoise_nl_means
from torch import nn

from . import metrics
from .batches import conditions, without_meta
from .data import MODEL_RANGE, PERCENTILES, ReadImage, load_images, to_model_range, to_units
from .files import save_json
from .sampler import FlowSampler
from .visualize import save_grid

logger = logging.getLogger(__name__)
NOISE_KINDS = ("gaussian", "rician")


def estimate_sigma(image: torch.Tensor) -> float:
    """Standard deviation of Gaussian noise in an image (C, *spatial), by scikit-image's wavelet estimator."""
    from skimage.restoration import estimate_sigma as wavelet_sigma

    return float(wavelet_sigma(image[0].detach().cpu().numpy().astype(np.float64)))


def series_range(pixels: torch.Tensor | np.ndarray, where: str) -> list[float]:
    """A series' robust intensity range [p0.5, p99.5] over all its pixels (any shape). A series with NaN or
    infinite values, or without spread, is refused with a message that names ``where``."""
    values = np.asarray(without_meta(pixels).cpu() if isinstance(pixels, torch.Tensor) else pixels)
    if not np.isfinite(values).all():
        raise ValueError(f"{where} holds NaN or infinite intensities: it cannot be denoised")
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if not hi > lo:
        raise ValueError(
            f"{where} has no intensity spread (its p{PERCENTILES[0]} and p{PERCENTILES[1]} are both {lo:g}): "
            "it cannot be denoised"
        )
    return [lo, hi]


@dataclass
class Denoised:
    """A denoised series.

    Attributes:
        images: (N, C, *spatial) in the input's units.
        nfe: network evaluations per image.
        sigma: the noise std used, in the model's units (std on [-1, 1]: a fraction sigma / 2 of the range).
        intensity_range: the series' [p0.5, p99.5] that [-1, 1] stood for.
    """

    images: torch.Tensor
    nfe: int
    sigma: float
    intensity_range: list[float]


class Denoiser:
    """The denoising policy (see the module's docstring): ``denoiser(network, images, where)`` on one series.

    Args:
        sampler: the ``FlowSampler`` (solver, steps) that integrates from the noise time to t = 1.
        sigma: noise std as a fraction of the series' range [p0.5, p99.5]; None estimates it, one per series.
        batch_size: images per network call.
        use_conditions: ``generate`` also passes each case's mask/class to a conditioned model (default: the model
            runs without them, the conditions it was trained to drop).
        intensity_range: the model card's range: ``generate`` returns images in the units it gives [-1, 1].
    """

    def __init__(
        self,
        sampler: FlowSampler,
        sigma: float | None = None,
        batch_size: int = 8,
        use_conditions: bool = False,
        intensity_range: Sequence[float] = MODEL_RANGE,
    ) -> None:
        self.sampler, self.sigma, self.batch_size = sampler, sigma, int(batch_size)
        self.use_conditions, self.intensity_range = use_conditions, list(intensity_range)

    @torch.no_grad()
    def __call__(
        self,
        network: nn.Module,
        images: torch.Tensor,
        where: str,
        pixels: torch.Tensor | np.ndarray | None = None,
        cond: dict | None = None,
        device=None,
    ) -> Denoised:
        """Denoises one series and returns it in the same units.

        Args:
            network: the flow model.
            images: the series on the model's grid, (N, C, *spatial), in its own units.
            where: names the series in errors.
            pixels: the series' pixels on their own grid (any shape), whose percentiles give its range; default
                ``images``.
            cond: the network's conditions, (N, ...) each.
            device: where the network runs.
        """
        images = without_meta(images).float().cpu()
        intensity_range = series_range(images if pixels is None else pixels, where)
        model_images = to_model_range(images, intensity_range)
        if self.sigma is not None:
            sigma = 2.0 * float(self.sigma)
        else:
            sigma = float(np.median([estimate_sigma(x) for x in model_images]))
        out, nfe = [], 0
        for start in range(0, len(images), self.batch_size):
            part = slice(start, start + self.batch_size)
            noisy = without_meta(model_images[part], device)
            denoised, nfe = self.sampler.denoise(network, noisy, sigma, {k: v[part] for k, v in (cond or {}).items()})
            out.append(denoised.cpu())
        return Denoised(without_meta(to_units(torch.cat(out), intensity_range)), nfe, sigma, intensity_range)

    def generate(self, network: nn.Module, batch: dict, shape: Sequence[int], seed: int, device=None):
        """The samplers' interface, for the synthesis workflow: denoises each case's ``image`` (on the model's grid,
        in its own units; its range read from its file) as a series of one. Returns (images (B, *shape) in the
        units of the card's [-1, 1], not clipped, so that the workflow's ``to_units`` gives the input's units
        back; NFE)."""
        cond = conditions(batch, bool(network.num_labels), network.num_classes, device) if self.use_conditions else {}
        out, nfe = [], 0
        for i, where in enumerate(batch["image"].meta["filename_or_obj"]):
            case_cond = {k: v[i : i + 1] for k, v in cond.items()}
            pixels = ReadImage(image_only=True)(where)
            denoised = self(network, batch["image"][i : i + 1], where, pixels, case_cond, device)
            out.append(denoised.images)
            nfe = denoised.nfe
        to_card_units = ScaleIntensityRange(*self.intensity_range, *MODEL_RANGE)
        return without_meta(to_card_units(torch.cat(out)), device), nfe


def add_noise(
    images: torch.Tensor,
    kind: str,
    level: float,
    generator: torch.Generator,
    intensity_range: Sequence[float] = MODEL_RANGE,
) -> torch.Tensor:
    """Adds noise of std ``level`` times the width of ``intensity_range`` to images (N, C, *spatial) in that
    range's units (default the model's [-1, 1]).

    Rician noise is the magnitude of a complex signal with Gaussian noise in both parts (magnitude MR), taken on
    intensities measured from the range's low end.
    """
    lo, hi = intensity_range
    n1 = level * (hi - lo) * torch.randn(images.shape, generator=generator)
    if kind == "gaussian":
        return images + n1
    if kind == "rician":
        n2 = level * (hi - lo) * torch.randn(images.shape, generator=generator)
        return lo + torch.sqrt((images - lo + n1) ** 2 + n2**2)
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def nl_means(images: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Classical baseline: scikit-image's non-local means on each image (N, 1, *spatial), std in model units."""
    out = [
        denoise_nl_means(x[0].numpy().astype(np.float64), h=0.8 * s, sigma=s, patch_size=5, patch_distance=6)
        for x, s in zip(images, sigmas)
    ]
    return torch.from_numpy(np.stack(out)).unsqueeze(1).float()


class DenoisingBenchmark:
    """PSNR/SSIM of the noisy input, non-local means and the flow (``Denoiser``) on clean series with added noise.

    A series is the cases that share ``series_key`` (e.g. a subject's slices, as a DICOM series holds them; a
    case without one is a series of one). Each clean series gets Gaussian or Rician noise of std ``level`` times
    its own range [p0.5, p99.5], in its own units; the denoiser sees only the noisy series, as the app does, and
    non-local means runs in the same normalisation with the same noise estimate. Every image is scored on its
    clean series' range scaled to [-1, 1], so the numbers mean the same for images in any units.

    Writes ``denoising.json`` (the rows) and ``denoising.png`` (a case per noise) into ``output_dir``.

    Args:
        network: the flow model (weights loaded).
        denoiser: the ``Denoiser`` (its ``sigma`` None: estimated, as in practice).
        cases: real cases with ``image`` (e.g. the test split).
        transforms: transforms to the model's grid that keep the images' units.
        output_dir: where the results go.
        levels: noise std as fractions of each clean series' range.
        kinds: noise kinds (``NOISE_KINDS``).
        series_key: the case key that groups cases into series.
        seed: the noise seed.
        device: where the network runs.
    """

    def __init__(
        self,
        network: nn.Module,
        denoiser: Denoiser,
        cases: Sequence[dict],
        transforms,
        output_dir: str,
        levels: Sequence[float] = (0.02, 0.05, 0.1),
        kinds: Sequence[str] = NOISE_KINDS,
        series_key: str = "subject",
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network, self.denoiser, self.cases, self.transforms = network, denoiser, list(cases), transforms
        self.output_dir, self.levels, self.kinds, self.seed, self.device = output_dir, levels, kinds, seed, device
        self.series_key = series_key

    def series(self) -> dict[str, list[int]]:
        """Series name -> the indices of its cases."""
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(self.cases):
            groups.setdefault(str(case.get(self.series_key, case["image"])), []).append(i)
        return groups

    @torch.no_grad()
    def run(self) -> list[dict]:
        clean = without_meta(load_images(self.cases, self.transforms)).float()
        self.network.to(self.device).eval()
        rows, grid = [], {"clean": [], "noisy": [], "nl-means": [], "flow": []}
        for kind in self.kinds:
            for level in self.levels:
                row, scored = self._score(clean, kind, level)
                rows.append(row)
                logger.info(f"denoising benchmark: {row}")
                for name, images in scored.items():
                    grid[name].append(images[0])
        os.makedirs(self.output_dir, exist_ok=True)
        units = [float(clean.min()), float(clean.max())]
        result = {"rows": rows, "num_cases": len(clean), "num_series": len(self.series()), "intensities": units}
        save_json(result, os.path.join(self.output_dir, "denoising.json"))
        titles = [f"{r['noise']} {r['level']}" for r in rows]
        save_grid(os.path.join(self.output_dir, "denoising.png"), list(grid.items()), titles=titles)
        return rows

    def _score(self, clean: torch.Tensor, kind: str, level: float) -> tuple[dict, dict[str, torch.Tensor]]:
        """One noise kind and level on every series: (the row, the images scored, each on its clean range)."""
        generator = torch.Generator().manual_seed(self.seed)
        scored = {name: torch.empty_like(clean) for name in ("clean", "noisy", "nl-means", "flow")}
        estimated, nfe = [], 0
        for name, indices in self.series().items():
            reference = series_range(clean[indices], name)
            noisy = add_noise(clean[indices], kind, level, generator, reference)
            flow = self.denoiser(self.network, noisy, name, device=self.device)
            lo, hi = flow.intensity_range
            baseline = to_units(nl_means(to_model_range(noisy, [lo, hi]), [flow.sigma] * len(indices)), [lo, hi])
            images = {"clean": clean[indices], "noisy": noisy, "nl-means": baseline, "flow": flow.images}
            for key, series in images.items():
                scored[key][indices] = without_meta(to_model_range(series, reference))
            estimated.append(flow.sigma / 2 * (hi - lo) / (reference[1] - reference[0]))
            nfe = flow.nfe
        row = {"noise": kind, "level": level, "sigma_estimated": float(np.mean(estimated)), "flow_nfe": nfe}
        psnr = {}
        for key in ("noisy", "nl-means", "flow"):
            psnr[key] = metrics.psnr_per_case(scored["clean"], scored[key])
            row[f"psnr_{key}"] = float(psnr[key].mean())
            row[f"ssim_{key}"] = float(metrics.ssim_per_case(scored["clean"], scored[key]).mean())
        gain = psnr["flow"] - psnr["nl-means"]
        row["psnr_flow_minus_nl-means"] = float(gain.mean())
        row["psnr_flow_minus_nl-means_ci95"] = metrics.bootstrap_ci(lambda i: float(gain[i].mean()), len(gain))
        return row, scored
