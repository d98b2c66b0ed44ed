"""Writes finished jobs as new DICOM series, whole or not at all, and reports every failure at the end."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom import config

from motfm_deploy.header import DerivedSeries
from motfm_deploy.jobs import Job
from motfm_deploy.report import Problem, RunReport

logger = logging.getLogger(__name__)


class RunFailures(RuntimeError):
    """Some inputs could not be processed; the message lists each, naming its file."""


def write_series(job: Job, output_folder: Path) -> Path:
    """Writes the job's output series to ``output_folder/<SeriesInstanceUID>/`` (``0001.dcm``, ... in plane order).

    The files go to a staging folder inside ``output_folder`` first, which is moved into place once complete;
    pydicom refuses to write any value invalid for its VR while it does.
    """
    series = DerivedSeries(job)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_folder))
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    try:
        for k in range(len(job.planes)):
            series.instance(k).save_as(staging / f"{k + 1:04d}.dcm", enforce_file_format=True)
        target = output_folder / series.uid
        os.replace(staging, target)
    finally:
        config.settings.writing_validation_mode = mode
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(f"wrote {len(job.planes)} instances of '{series.description()}' to {target} from {job.name}")
    return target


class SeriesWriterOperator(Operator):
    """Writes each finished job as a new series in the output folder (``write_series``), then, if anything
    failed (an unusable file, a failed job), raises ``RunFailures`` listing every failure: the run ends in error
    and names the files, while the series that succeeded are kept. A run that selects nothing is an error too.
    Each series written and each failure go into the run's ``report``.

    Named inputs:
        synthesized, denoised: list[Job] from the synthesis and denoising operators.
        failures: list[Problem], files the loader could not use.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, report: RunReport, **kwargs) -> None:
        self.output_folder, self.report = Path(output_folder), report
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("synthesized")
        spec.input("denoised")
        spec.input("failures")

    def compute(self, op_input, op_output, context) -> None:
        jobs = op_input.receive("synthesized") + op_input.receive("denoised")
        report = self.report
        report.problems.extend(op_input.receive("failures"))
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            if job.error is not None:
                report.problems.append(Problem(job.files, job.error))
                continue
            try:
                report.add_series(job, write_series(job, self.output_folder))
            except Exception as e:
                logger.exception(f"writing failed: {job.name}")
                message = f"{job.name}: writing its output failed: {type(e).__name__}: {e}"
                report.problems.append(Problem(job.files, message))
        written, problems = len(report.series), report.problems
        logger.info(f"{written} series written to {self.output_folder}, {len(problems)} failures")
        if problems:
            lines = "\n".join(f"- {p.message}" for p in problems)
            raise RunFailures(f"{len(problems)} input problems ({written} series written):\n{lines}")
        if not written:
            raise RunFailures("no series to process: the selection rules matched no series in the input")
