"""The inference workflow: one generated image per case, written on the case's own grid and in its units.

Outputs in ``output_dir`` (written in a staging folder beside it and moved into place only when complete):

- ``images/<id>.nii.gz``: each generated image on the grid (affine, spacing, shape) of its conditioning mask
  (or its real image, for class-only variants; the model grid for unconditional samples);
- ``labels/<id>.nii.gz``: a copy of each conditioning mask, so the set stands alone;
- ``datalist.json``: the generated set as a MONAI datalist (``training``), to train any other bundle;
- ``samples.png``: a grid of samples beside their masks (and real images where the case has one);
- ``info.json``: solver, steps, NFE, seed, guidance, seconds per sample, device.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset, decollate_batch
from torch import nn
from tqdm import tqdm

from .data import to_source_grid, to_units
from .sampler import Sampler
from .visualize import save_grid

logger = logging.getLogger(__name__)


def unconditional_cases(num_samples: int) -> list[dict]:
    """Cases for unconditional sampling: only an index and an id."""
    return [{"index": i, "id": f"sample_{i:04d}"} for i in range(num_samples)]


class Synthesis:
    """Generates one image per case and writes NIfTI, a PNG grid, a datalist and run info.

    Args:
        network: the trained network (weights loaded).
        sampler: ``FlowSampler`` or ``DiffusionSampler``.
        cases: cases from ``load_cases`` (or ``unconditional_cases``).
        transforms: the model's input transforms (``input_transforms``).
        image_size: the model's spatial shape.
        intensity_range: the data units that [-1, 1] stands for (from the model card).
        output_dir: where the outputs go; replaced as a whole when the run completes.
        seed: noise seed; the same seed gives the same images.
        batch_size: cases per network call.
        device: torch device.
        info: extra entries for ``info.json`` (e.g. checkpoint path).
        grid_cases: how many cases the PNG grid shows.
    """

    def __init__(
        self,
        network: nn.Module,
        sampler: Sampler,
        cases: Sequence[dict],
        transforms,
        image_size: Sequence[int],
        intensity_range: Sequence[float],
        output_dir: str,
        seed: int = 0,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        info: dict | None = None,
        grid_cases: int = 16,
    ) -> None:
        self.network, self.sampler, self.cases, self.transforms = network, sampler, list(cases), transforms
        self.image_size, self.intensity_range = list(image_size), list(intensity_range)
        self.output_dir, self.seed, self.batch_size = os.path.abspath(output_dir), seed, batch_size
        self.device, self.info, self.grid_cases = torch.device(device), dict(info or {}), grid_cases

    def _check_output_dir(self) -> None:
        for case in self.cases:
            for key in ("image", "label"):
                if key in case and os.path.abspath(case[key]).startswith(self.output_dir + os.sep):
                    raise ValueError(f"output_dir {self.output_dir} holds input {case[key]}; choose another output_dir")

    def run(self) -> dict:
        """Generates every case; returns the run info. On any error nothing is left in ``output_dir``."""
        self._check_output_dir()
        parent = os.path.dirname(self.output_dir)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output_dir)}-", dir=parent)
        try:
            info = self._generate(staging)
            _replace_dir(staging, self.output_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info(f"wrote {info['num_cases']} cases to {self.output_dir} ({info['nfe']} NFE per sample)")
        return info

    def _generate(self, staging: str) -> dict:
        self.network.to(self.device).eval()
        loader = DataLoader(Dataset(self.cases, self.transforms), batch_size=self.batch_size, num_workers=0)
        entries, grid, sampling_seconds, nfe = [], {"mask": [], "sample": [], "real": []}, 0.0, 0
        start = time.perf_counter()
        for batch in tqdm(loader, desc="sampling", unit="batch"):
            t0 = time.perf_counter()
            images, nfe = self.sampler.generate(self.network, batch, [1, *self.image_size], self.seed, self.device)
            sampling_seconds += time.perf_counter() - t0
            for case, image in zip(decollate_batch(batch), images.cpu()):
                entries.append(self._write_case(staging, case, image))
                if len(grid["sample"]) < self.grid_cases:
                    grid["sample"].append(image)
                    for key, row in (("label", "mask"), ("image", "real")):
                        if key in case:
                            grid[row].append(case[key])
        rows = [(name, images) for name, images in grid.items() if images]
        save_grid(os.path.join(staging, "samples.png"), rows)
        with open(os.path.join(staging, "datalist.json"), "w") as f:
            json.dump({"training": entries}, f, indent=1)
        info = {
            **self.info,
            "num_cases": len(entries),
            "nfe": nfe,
            "seed": self.seed,
            "seconds": round(time.perf_counter() - start, 3),
            "seconds_per_sample": round(sampling_seconds / max(len(entries), 1), 4),
            "device": str(self.device),
        }
        with open(os.path.join(staging, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        return info

    def _write_case(self, staging: str, case: dict, image: torch.Tensor) -> dict:
        """Writes one generated image (1, *image_size) in data units on its reference's grid."""
        reference = case.get("label", case.get("image"))
        image = to_units(image, self.intensity_range)
        if reference is not None:
            image = to_source_grid(image, reference)
            affine = np.asarray(image.affine, dtype=np.float64)
        else:
            affine = np.eye(4)
        entry = {"image": f"images/{case['id']}.nii.gz"}
        _save_nifti(np.asarray(image[0], dtype=np.float32), affine, os.path.join(staging, entry["image"]))
        if "label" in case:
            source = case["label"].meta["filename_or_obj"]
            entry["label"] = f"labels/{case['id']}.nii.gz"
            _copy_label(source, os.path.join(staging, entry["label"]))
        if "class" in case:
            entry["class"] = int(case["class"])
        return entry


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _copy_label(source: str, path: str) -> None:
    """Copies a NIfTI mask as is; a mask from DICOM is written as NIfTI with its grid."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if source.endswith(".nii.gz"):
        shutil.copyfile(source, path)
    else:
        from monai.transforms import LoadImage

        mask = LoadImage(image_only=True)(source)
        _save_nifti(np.asarray(mask, dtype=np.uint8), np.asarray(mask.affine), path)


def _replace_dir(staging: str, target: str) -> None:
    """Moves ``staging`` to ``target``, replacing an earlier ``target`` only once the new one is complete."""
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}-old-", dir=os.path.dirname(target))
        os.replace(target, os.path.join(old, "previous"))
    os.replace(staging, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)
