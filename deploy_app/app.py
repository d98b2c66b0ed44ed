"""MOTFM DICOM application: DICOM studies in, new DICOM image series out (mask-conditioned synthesis, denoising).

    python deploy_app -i INPUT -o OUTPUT -m MODEL   (or HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH, HOLOSCAN_MODEL_PATH)

Settings from the environment (see README.md):
    MOTFM_TASK             synthesize | denoise; default: synthesize where a study has a DICOM SEG, else denoise
    MOTFM_LABEL_MAP        JSON file mapping SEG segments to model labels (default: label_map.json here)
    MOTFM_SELECTION_RULES  JSON file of series selection rules in the SDK selector's format (default: all series)
    MOTFM_RUN_REPORT       where the run report goes (series written, problems per file, exit status; see
                           motfm_deploy/report.py); default: OUTPUT/motfm_run.json
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from motfm_deploy.jobs import TASKS
from motfm_deploy.labels import DEFAULT_LABEL_MAP, LabelMap
from motfm_deploy.model import Bundle
from motfm_deploy.report import REPORT_FILE, RunReport
from operators.denoise import DenoiseOperator
from operators.seg_reader import SegReaderOperator
from operators.series_writer import RunFailures, SeriesWriterOperator
from operators.study_loader import StudyLoaderOperator
from operators.synthesis import SynthesisOperator

logger = logging.getLogger(__name__)
# errors of the input, the model folder or the settings: the run ends with the message (exit status 1)
RUN_ERRORS = (RunFailures, ValueError, FileNotFoundError)


def task_setting() -> str | None:
    """MOTFM_TASK: a task for every study, or None to choose per study."""
    task = os.environ.get("MOTFM_TASK", "").strip().lower() or None
    if task is not None and task not in TASKS:
        raise ValueError(f"MOTFM_TASK must be one of {TASKS} or unset, got {task!r}")
    return task


def selection_rules() -> str:
    """The JSON text of the file MOTFM_SELECTION_RULES names, checked; "" (all series) when unset."""
    path = os.environ.get("MOTFM_SELECTION_RULES", "").strip()
    if not path:
        return ""
    try:
        text = Path(path).read_text()
        if not json.loads(text).get("selections"):
            raise ValueError('it has no "selections" list')
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"selection rules {path} (MOTFM_SELECTION_RULES) cannot be used: {e}") from e
    return text


class MotfmApp(Application):
    """Loads the input's DICOM studies, selects series (SDK selector), makes one job per output series (a SEG to
    synthesize from, or an image series to denoise), runs the bundle's sampler and writes new DICOM series.

    study_loader -> series_selector -> seg_reader -> synthesis -> series_writer
                                                  -> denoise   ->
    study_loader (unusable files) ---------------------------------> series_writer

    ``run`` writes the run's ``report`` (``report_path``) when the run ends, however it ends.
    """

    def __init__(self, *args, **kwargs) -> None:
        self.report, self.report_path = RunReport(), None
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            if self.report_path is not None:  # known once compose has read the arguments
                error = str(e) if isinstance(e, RUN_ERRORS) else f"{type(e).__name__}: {e}"
                self.report.write(self.report_path, 1, error)
            raise
        self.report.write(self.report_path, 0, None)

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        self.report_path = Path(os.environ.get("MOTFM_RUN_REPORT") or Path(context.output_path) / REPORT_FILE)
        bundle = Bundle(context.model_path)
        label_map = LabelMap.read(os.environ.get("MOTFM_LABEL_MAP") or DEFAULT_LABEL_MAP)
        logger.info(f"input {context.input_path}, output {context.output_path}, model {context.model_path}")

        loader = StudyLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), name="study_loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=selection_rules(), all_matched=True, name="series_selector")
        reader = SegReaderOperator(self, label_map=label_map, task=task_setting(), name="seg_reader")
        synthesis = SynthesisOperator(self, bundle=bundle, name="synthesis")
        denoise = DenoiseOperator(self, bundle=bundle, name="denoise")
        writer = SeriesWriterOperator(
            self, output_folder=Path(context.output_path), report=self.report, name="series_writer"
        )

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, writer, {("failures", "failures")})
        self.add_flow(selector, reader, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(reader, synthesis, {("synthesis", "jobs")})
        self.add_flow(reader, denoise, {("denoise", "jobs")})
        self.add_flow(synthesis, writer, {("jobs", "synthesized")})
        self.add_flow(denoise, writer, {("jobs", "denoised")})
