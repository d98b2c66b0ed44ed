"""Evaluation: compare a generated set (the output folder of a synthesis run) with the real test cases.

Both sets go through the same input transforms, so they are compared on the model's grid and in its [-1, 1]
range. Writes ``metrics.json`` and ``intensity_kde.png`` into the generated set's folder.

metrics.json keys: ``mmd``, ``hist_wasserstein``, ``ms_ssim_diversity`` (and ``ms_ssim_diversity_real``),
``ssim_paired``, ``psnr_paired``, ``mask_dice``, ``fid``, ``nfe``, ``seconds_per_sample``, ``device``; a key the
variant cannot have is null, and ``skipped`` says why each null metric was not computed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import torch
from scipy.stats import gaussian_kde

from . import downstream, metrics
from .checkpoint import save_atomic
from .data import load_batch, load_cases
from .flow import plain
from .visualize import plt

logger = logging.getLogger(__name__)


def load_images(cases: Sequence[dict], transforms, key: str = "image", batch: int = 64) -> torch.Tensor:
    """The ``key`` of every case, transformed and stacked: (N, 1, *image_size)."""
    parts = [plain(load_batch(cases[i : i + batch], transforms)[key]) for i in range(0, len(cases), batch)]
    return torch.cat(parts)


class Evaluation:
    """Computes the metrics of a generated set against real cases.

    Args:
        output_dir: a synthesis output folder (``datalist.json``, ``info.json``, images); metrics are added to it.
        real_cases: the real cases the set was generated for (same order), from ``load_cases``.
        transforms: the model's input transforms (``input_transforms`` with the model card's intensity range).
        image_size: the model's spatial shape.
        num_labels: mask labels (0: not mask-conditioned, so no paired metrics and no mask Dice).
        segmenter_path: a segmenter model file for mask consistency (see ``downstream``); None or missing: skipped.
        fid_model: optional local TorchScript feature network for FID (images (N, 3, 299, 299) in [0, 1] ->
            features (N, F)); None: FID skipped (no Inception weights ship or download here).
        device: torch device for the networks.
    """

    def __init__(
        self,
        output_dir: str,
        real_cases: Sequence[dict],
        transforms,
        image_size: Sequence[int],
        num_labels: int,
        segmenter_path: str | None = None,
        fid_model: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.output_dir, self.real_cases, self.transforms = output_dir, list(real_cases), transforms
        self.image_size, self.num_labels = list(image_size), num_labels
        self.segmenter_path, self.fid_model, self.device = segmenter_path, fid_model, device

    def run(self) -> dict:
        with open(os.path.join(self.output_dir, "info.json")) as f:
            info = json.load(f)
        generated_cases = load_cases(os.path.join(self.output_dir, "datalist.json"), "training")
        generated = load_images(generated_cases, self.transforms)
        real = load_images(self.real_cases, self.transforms)
        values: dict = {
            "num_generated": len(generated),
            "num_real": len(real),
            "mmd": metrics.mmd(real, generated),
            "hist_wasserstein": metrics.hist_wasserstein(real, generated),
            "ms_ssim_diversity": metrics.ms_ssim_diversity(generated),
            "ms_ssim_diversity_real": metrics.ms_ssim_diversity(real),
            "ssim_paired": None,
            "psnr_paired": None,
            "mask_dice": None,
            "fid": None,
            **{key: info.get(key) for key in ("nfe", "seconds_per_sample", "device", "solver", "num_steps")},
            "skipped": {},
        }
        if self.num_labels:
            if len(generated) != len(real):
                raise ValueError(
                    f"{self.output_dir} holds {len(generated)} generated cases for {len(real)} real ones: "
                    "paired metrics need one generated image per real case"
                )
            values["ssim_paired"] = metrics.ssim_paired(real, generated)
            values["psnr_paired"] = metrics.psnr_paired(real, generated)
            values["mask_dice"] = self._mask_dice(generated, values["skipped"])
        else:
            values["skipped"]["paired"] = "the variant has no mask: no real image pairs with a generated one"
        values["fid"] = self._fid(real, generated, values["skipped"])
        self._plot_kde(real, generated)
        save_json(values, os.path.join(self.output_dir, "metrics.json"))
        logger.info("metrics: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "skipped"))
        return values

    def _mask_dice(self, generated: torch.Tensor, skipped: dict) -> float | None:
        if not self.segmenter_path or not os.path.isfile(self.segmenter_path):
            skipped["mask_dice"] = (
                f"no segmenter at {self.segmenter_path}; train one with bundle/configs/train_segmenter.json"
            )
            return None
        segmenter = downstream.load(self.segmenter_path, "segmenter", self.image_size, self.num_labels, self.device)
        masks = load_images(self.real_cases, self.transforms, key="label")
        return metrics.mask_dice(masks, downstream.predict(segmenter, generated), self.num_labels)

    def _fid(self, real: torch.Tensor, generated: torch.Tensor, skipped: dict) -> float | None:
        if not self.fid_model:
            skipped["fid"] = "no local Inception weights given (fid_model); none ship with any package or download"
            return None
        if len(self.image_size) != 2:
            skipped["fid"] = "FID uses a 2D feature network; this is a 3D model"
            return None
        if not os.path.isfile(self.fid_model):
            raise FileNotFoundError(f"fid_model not found: {self.fid_model}")
        network = torch.jit.load(self.fid_model, map_location=self.device).eval()

        def features(images: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear")
            with torch.no_grad():
                return network(x.repeat(1, 3, 1, 1).to(self.device)).cpu()

        from monai.metrics import FIDMetric

        return float(FIDMetric()(features(generated), features(real)))

    def _plot_kde(self, real: torch.Tensor, generated: torch.Tensor, points: int = 20000) -> None:
        """Kernel density of real vs generated intensities (as MOTFM's Figure 3)."""
        grid = torch.linspace(-1, 1, 400).numpy()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, images in (("real", real), ("generated", generated)):
            values = metrics.intensity_values(images)
            values = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))[:points].numpy()]
            ax.plot(grid, gaussian_kde(values)(grid), label=name)
        ax.set_xlabel("intensity (model range)")
        ax.set_ylabel("density")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(self.output_dir, "intensity_kde.png"), dpi=100)
        plt.close(fig)


def save_json(content: dict, path: str) -> None:
    """Writes JSON atomically (via ``save_atomic``'s temporary-file-and-rename)."""
    save_atomic(content, path, writer=lambda obj, f: f.write(json.dumps(obj, indent=1).encode()))
