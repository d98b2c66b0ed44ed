"""Synthesizes images from the model labels of synthesis jobs."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np
from monai.data import list_data_collate

from motfm_deploy.images import Plane
from motfm_deploy.jobs import Job
from motfm_deploy.model import Model, batches, plane_tensor, volume_tensor
from motfm_deploy.stack import Stack
from operators.model_operator import ModelOperator

if TYPE_CHECKING:
    from scripts.classes import ClassRule

logger = logging.getLogger(__name__)


def plane_classes(rule: ClassRule, planes: list[Plane], labels: np.ndarray) -> list[int | None]:
    """The class of each plane of a stack by the bundle's class ``rule`` (``scripts.classes``, as the training
    data's), read along the stack in the direction the rule reads (e.g. axial levels: by slice rank along the
    patient's feet-head axis); None ("no class") for all planes of a stack along another direction.

    Args:
        rule: a ``scripts.classes.ClassRule``.
        planes: the stack's planes.
        labels: (n, rows, columns) model labels.
    """
    if int(np.argmax(np.abs(planes[0].normal))) != rule.world_axis:  # LPS and RAS share their axes' order
        return [None] * len(planes)
    order = np.argsort([p.position[rule.world_axis] for p in planes], kind="stable")
    classes = np.empty(len(planes), int)
    classes[order] = rule.derive(labels[order], 0)
    return classes.tolist()


def class_rule(model: Model) -> ClassRule:
    """The rule (``scripts.classes``) that gives a class-conditioned model's classes, as its card declares. Raises
    ValueError naming the model file when the card declares none, or a rule the bundle does not know or that gives
    another number of classes: the app cannot tell which class a plane is for such a model (`classes` in the
    training config declares them; a model file without a declaration takes them from configs/deploy.json)."""
    from scripts.classes import class_rule as bundle_rule

    return bundle_rule(model.classes, model.num_classes, f"model file {model.file}")


def synthesis_cases(model: Model, job: Job, stack: Stack | None = None) -> list[dict]:
    """The model's inputs for a job: one case per plane (2D model) or one for the stack (3D model: ``stack``, else
    ``model.stack`` of the job's planes), each with its labels, its class (by the rule its card declares, or "no
    class"), its index and its ``noise_index``: the plane's own noise, or with ``model.noise`` "per_subject" one
    noise for all planes of the series (named by the SEG's Series Instance UID, so the same input gives the same
    output)."""
    from scripts.sampler import noise_index

    labels = job.labels.astype(np.float32)
    series = str(getattr(job.seg, "SeriesInstanceUID", job.name))
    if model.spatial_dims == 3:
        volume = volume_tensor(stack or model.stack(job.planes), labels, labels=True)
        cases = [{"label": volume, "class": model.num_classes, "index": 0}]
    else:
        classes = (
            plane_classes(class_rule(model), job.planes, job.labels) if model.num_classes else [None] * len(job.planes)
        )
        cases = [
            {"label": plane_tensor(p, m), "class": model.num_classes if c is None else c, "index": i}
            for i, (p, m, c) in enumerate(zip(job.planes, labels, classes))
        ]
    return [{**case, "noise_index": noise_index({**case, "subject": series}, model.noise)} for case in cases]


def synthesize(model: Model, job: Job) -> Job:
    """Generates the job's images from ``synthesis_cases`` with the model's seed, in batches. Images are in the
    model's intensity units (its card's intensity range) on the planes' own grid. A 3D model's stack is checked
    (``Model.stack``: its geometry and ``max_voxels``) before any work; its output goes back to each plane."""
    stack = model.stack(job.planes) if model.spatial_dims == 3 else None
    cases = synthesis_cases(model, job, stack)
    prepared, outputs, nfe, done = model.prepare(cases), [], 0, 0
    for chunk in batches(prepared, model.batch_size):
        batch = list_data_collate(list(chunk))
        images, nfe = model.sampler.generate(model.network, batch, [1, *model.image_size], model.seed, model.device)
        outputs += model.restore(images, [c["label"] for c in chunk], model.intensity_range)
        done += len(chunk)
        logger.info(f"synthesized {done} of {len(cases)} {'stack' if stack else 'plane'}s of {job.name}")
    images = np.stack(outputs) if stack is None else stack.to_planes(np.stack(outputs))
    given = sorted({c["class"] for c in cases if c["class"] != model.num_classes})
    rule = str((model.classes or {}).get("rule", "")).replace("_", " ")
    details = (f"{rule} classes {given}" if given else "no class") if model.num_classes else ""
    return dataclasses.replace(job, images=images, model=model.info, nfe=nfe, details=details)


class SynthesisOperator(ModelOperator):
    """Runs the bundle's sampler on each synthesis job (``synthesize``)."""

    work = staticmethod(synthesize)
