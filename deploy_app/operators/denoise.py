"""Denoises the image series of denoising jobs."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from motfm_deploy.jobs import Job
from motfm_deploy.model import Model, plane_tensor, to_planes, volume_tensor
from operators.model_operator import ModelOperator

logger = logging.getLogger(__name__)


def denoise(model: Model, job: Job) -> Job:
    """Denoises the job's planes (2D model) or stack (3D model) with the bundle's denoising policy,
    ``scripts.denoising.Denoiser``, the series as one: scaled from the 0.5-99.5 percentile range of its pixels to
    [-1, 1], one noise level estimated for it, and scaled back, so the output keeps the source's units (HU for CT,
    the scanner's scale for MR). The planes go to the model's grid in their units and come back to their own grids
    (a 3D model's stack is checked first, ``Model.stack``, and an uneven one resampled linearly and back).
    """
    from scripts.data import to_source_grid
    from scripts.denoising import Denoiser

    arrays = [p.pixels() for p in job.planes]
    stack = model.stack(job.planes) if model.spatial_dims == 3 else None
    if stack is None:
        cases = [{"image": plane_tensor(p, a)} for p, a in zip(job.planes, arrays)]
    else:
        cases = [{"image": volume_tensor(stack, arrays, labels=False)}]
    references = [case["image"] for case in model.prepare(cases)]
    denoiser = Denoiser(model.sampler, batch_size=model.batch_size)
    pixels = np.concatenate([a.ravel() for a in arrays])
    out = denoiser(model.network, torch.stack(references), "the series", pixels, device=model.device)
    planes = np.stack([p for image, ref in zip(out.images, references) for p in to_planes(to_source_grid(image, ref))])
    planes = planes if stack is None else stack.to_planes(planes)
    lo, hi = out.intensity_range
    logger.info(f"denoised {len(planes)} planes of {job.name} (noise sigma {out.sigma:.4f} on [{lo:g}, {hi:g}])")
    details = f"noise std {out.sigma:.4f} estimated on [-1, 1] = [{lo:g}, {hi:g}]"
    return dataclasses.replace(job, images=planes, model=model.info, nfe=out.nfe, details=details)


class DenoiseOperator(ModelOperator):
    """Runs the bundle's denoising policy on each denoising job (``denoise``)."""

    work = staticmethod(denoise)
