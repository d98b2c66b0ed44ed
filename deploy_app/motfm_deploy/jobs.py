"""What flows between the operators: one job per output series, carrying its error instead when it failed."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from .images import Plane

logger = logging.getLogger(__name__)
TASKS = ("synthesize", "denoise")


@dataclass
class ModelInfo:
    """The model that made an output, as the output names it."""

    name: str
    version: str
    settings: str  # method, solver and steps


@dataclass
class Job:
    """One output series to make from one source series.

    Attributes:
        task: "synthesize" or "denoise".
        name: the source for messages and logs (it names a file).
        planes: the source series' planes, sorted along their normal (the output has one instance per plane).
        labels: synthesis only: model labels per plane (n, rows, columns), int.
        seg: synthesis only: the SEG the labels come from.
        images: the output per plane (n, rows, columns) in the source's units, once made.
        model: the model that made the images.
        details: how the output was made, for its DerivationDescription (the noise estimate, the classes).
        nfe: network evaluations per image.
        error: why the job failed (then nothing is written for it).
        files: the input files it comes from (a failure is reported against them).
    """

    task: str
    name: str
    planes: list[Plane] = field(default_factory=list)
    labels: np.ndarray | None = None
    seg: Dataset | None = None
    images: np.ndarray | None = None
    model: ModelInfo | None = None
    details: str = ""
    nfe: int = 0
    error: str | None = None
    files: list[str] = field(default_factory=list)

    def failed(self, error: str) -> Job:
        return dataclasses.replace(self, error=error)


def process(jobs: list[Job], work: Callable[[Job], Job]) -> list[Job]:
    """``work`` on each job not failed yet; an exception fails that job only, with a message naming its source."""
    done = []
    for job in jobs:
        if job.error is None:
            try:
                job = work(job)
            except Exception as e:
                logger.exception(f"{job.task} failed: {job.name}")
                job = job.failed(f"{job.name}: {type(e).__name__}: {e}")
        done.append(job)
    return done
