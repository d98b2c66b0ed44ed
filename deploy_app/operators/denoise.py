"""Denoises the image series of denoising jobs."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from motfm_deploy.jobs import Job
from motfm_deploy.model import Model, batches, plane_tensor, volume_tensor
from operators.model_operator import ModelOperator

logger = logging.getLogger(__name__)
PERCENTILES = (0.5, 99.5)  # the series' intensities the model's [-1, 1] stands for


def denoise(model: Model, job: Job) -> Job:
    """Denoises the job's planes (2D model) or stack (3D model) with the bundle's sampler.

    The model sees the series scaled from its own 0.5-99.5 percentile range to [-1, 1] (values outside are
    clipped) and its output is scaled back, so the result keeps the source's units (HU for CT, the scanner's
    scale for MR). The noise level is one for the series: the median over its planes of the wavelet estimate on
    the model's grid (planes at the ends of a stack, mostly background, give unreliable estimates of their own),
    which also lets the planes go through the sampler in batches. The model runs without mask and class (the
    conditions it was trained to drop).
    """
    from scripts.sampler import estimate_sigma

    arrays = [p.pixels() for p in job.planes]
    lo, hi = (float(v) for v in np.percentile(np.concatenate([a.ravel() for a in arrays]), PERCENTILES))
    if not hi > lo:
        raise ValueError(f"the series has no intensity spread (all values {lo})")
    if model.spatial_dims == 2:
        cases = [{"image": plane_tensor(p, a)} for p, a in zip(job.planes, arrays)]
    else:
        cases = [{"image": volume_tensor(job.planes, arrays)}]
    prepared = model.prepare(cases, [lo, hi])
    sigma = float(np.median([estimate_sigma(c["image"]) for c in prepared]))
    outputs, nfe = [], 0
    for chunk in batches(prepared, model.batch_size):
        noisy = torch.stack([c["image"].as_tensor() for c in chunk]).to(model.device)
        images, nfe = model.sampler.denoise(model.network, noisy, sigma)
        outputs += model.restore(images, [c["image"] for c in chunk], [lo, hi])
        logger.info(f"denoised {len(outputs)} of {len(job.planes)} planes of {job.name} (noise sigma {sigma:.4f})")
    details = f"noise std {sigma:.4f} estimated on [-1, 1] = [{lo:g}, {hi:g}]"
    return dataclasses.replace(job, images=np.stack(outputs), model=model.info, nfe=nfe, details=details)


class DenoiseOperator(ModelOperator):
    """Runs the bundle's denoising sampler on each denoising job (``denoise``)."""

    work = staticmethod(denoise)
