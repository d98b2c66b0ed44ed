"""Denoising with the flow: a noisy image is a point on the path, so the rest of the path removes the noise.

For x_t = (1 - t) x0 + t x1, an image with Gaussian noise of std sigma (in the model's [-1, 1] units) is
x_t / t at t = 1 / (1 + sigma). ``Denoiser`` scales it onto the path and integrates to t = 1 with the chosen
solver. Noise levels that users give are fractions of the intensity range (the model's std is twice that).

``Denoiser`` has the samplers' ``generate`` interface, so the synthesis workflow writes denoised images on the
source grid and in the source units; ``DenoisingBenchmark`` measures it against non-local means.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from skimage.restoration import denoise_nl_means
from torch import nn

from . import metrics
from .data import load_images
from .evaluation import save_json
from .flow import conditions, plain
from .sampler import FlowSampler, estimate_sigma
from .visualize import save_grid

NOISE_KINDS = ("gaussian", "rician")


def add_noise(images: torch.Tensor, kind: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """Adds noise of std ``level`` (a fraction of the intensity range) to images in [-1, 1].

    Rician noise is the magnitude of a complex signal with Gaussian noise in both parts (magnitude MR), taken
    on intensities shifted to [0, 1].
    """
    n1 = torch.randn(images.shape, generator=generator)
    if kind == "gaussian":
        return images + 2 * level * n1
    if kind == "rician":
        n2 = torch.randn(images.shape, generator=generator)
        magnitude = torch.sqrt(((images + 1) / 2 + level * n1) ** 2 + (level * n2) ** 2)
        return 2 * magnitude - 1
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def nl_means(images: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Classical baseline: scikit-image's non-local means on each image (N, 1, *spatial), std in model units."""
    out = [
        denoise_nl_means(x[0].numpy().astype(np.float64), h=0.8 * s, sigma=s, patch_size=5, patch_distance=6)
        for x, s in zip(images, sigmas)
    ]
    return torch.from_numpy(np.stack(out)).unsqueeze(1).float()


class Denoiser:
    """Denoises images with a flow model.

    Args:
        sampler: the ``FlowSampler`` (solver, steps) that integrates from the noise time to t = 1.
        sigma: noise std as a fraction of the intensity range; None estimates it per image.
        use_conditions: also pass the case's mask/class to a conditioned model (default: denoise without them).
    """

    def __init__(self, sampler: FlowSampler, sigma: float | None = None, use_conditions: bool = False) -> None:
        self.sampler, self.sigma, self.use_conditions = sampler, sigma, use_conditions

    def model_sigmas(self, images: torch.Tensor) -> list[float]:
        """Noise std per image (N, 1, *spatial) in model units: the given one, or the wavelet estimate."""
        if self.sigma is not None:
            return [2.0 * self.sigma] * len(images)
        return [estimate_sigma(x) for x in images]

    def denoise(self, network: nn.Module, images: torch.Tensor, cond: dict | None = None):
        """Images (N, 1, *spatial) in model units -> (denoised images, NFE per image, sigmas used)."""
        sigmas, out, nfe = self.model_sigmas(images), [], 0
        for i, (x, s) in enumerate(zip(images, sigmas)):
            case_cond = {k: v[i : i + 1] for k, v in (cond or {}).items()}
            y, nfe = self.sampler.denoise(network, x[None], s, case_cond)
            out.append(y[0])
        return torch.stack(out), nfe, sigmas

    def generate(self, network: nn.Module, batch: dict, shape: Sequence[int], seed: int, device=None):
        """The samplers' interface: denoises ``batch["image"]``; returns (images, NFE)."""
        cond = conditions(batch, bool(network.num_labels), network.num_classes, device) if self.use_conditions else {}
        images, nfe, _ = self.denoise(network, plain(batch["image"], device), cond)
        return images, nfe


class DenoisingBenchmark:
    """PSNR/SSIM of noisy inputs, non-local means and the flow on real images with added noise.

    Writes ``denoising.json`` (rows), ``denoising.md`` (the table) and ``denoising.png`` (one case per level).

    Args:
        network: the flow model (weights loaded).
        denoiser: the ``Denoiser`` (its ``sigma`` None: estimated, as in practice).
        cases: real cases with ``image`` (e.g. the test split).
        transforms: the model's input transforms.
        output_dir: where the results go.
        levels: noise std as fractions of the intensity range.
        kinds: noise kinds (``NOISE_KINDS``).
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
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network, self.denoiser, self.cases, self.transforms = network, denoiser, list(cases), transforms
        self.output_dir, self.levels, self.kinds, self.seed, self.device = output_dir, levels, kinds, seed, device

    @torch.no_grad()
    def run(self) -> list[dict]:
        clean = load_images(self.cases, self.transforms)
        self.network.to(self.device).eval()
        rows, grid = [], {"clean": [], "noisy": [], "nl-means": [], "flow": []}
        for kind in self.kinds:
            for level in self.levels:
                noisy = add_noise(clean, kind, level, torch.Generator().manual_seed(self.seed))
                flow, nfe, sigmas = self.denoiser.denoise(self.network, noisy.to(self.device))
                results = {"noisy": noisy, "nl-means": nl_means(noisy, sigmas), "flow": flow.cpu()}
                row = {"noise": kind, "level": level, "sigma_estimated": float(np.mean(sigmas)) / 2, "flow_nfe": nfe}
                for name, images in results.items():
                    images = images.clamp(-1, 1)
                    row[f"psnr_{name}"] = float(metrics.psnr_per_case(clean, images).mean())
                    row[f"ssim_{name}"] = float(metrics.ssim_per_case(clean, images).mean())
                rows.append(row)
                grid["clean"].append(clean[0])
                for name, images in results.items():
                    grid[name].append(images[0])
        os.makedirs(self.output_dir, exist_ok=True)
        save_json({"rows": rows, "num_cases": len(clean)}, os.path.join(self.output_dir, "denoising.json"))
        with open(os.path.join(self.output_dir, "denoising.md"), "w") as f:
            f.write(table(rows))
        titles = [f"{r['noise']} {r['level']}" for r in rows]
        save_grid(os.path.join(self.output_dir, "denoising.png"), list(grid.items()), titles=titles)
        print(table(rows))
        return rows


def table(rows: Sequence[dict]) -> str:
    """A Markdown table of benchmark rows."""
    header = ["noise", "level", "estimated", "PSNR noisy", "PSNR NL-means", "PSNR flow"]
    header += ["SSIM noisy", "SSIM NL-means", "SSIM flow"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['noise']} | {r['level']:g} | {r['sigma_estimated']:.3f} | {r['psnr_noisy']:.2f} | "
            f"{r['psnr_nl-means']:.2f} | {r['psnr_flow']:.2f} | {r['ssim_noisy']:.3f} | {r['ssim_nl-means']:.3f} | "
            f"{r['ssim_flow']:.3f} |"
        )
    return "\n".join(lines) + "\n"
