"""Processes complete studies with the deploy app, run as a subprocess on a batch of studies at a time.

A run isolates the node from the model (a crash, a leak, a hung GPU) and loads Python, Holoscan, torch and the
bundle once for the whole batch. The app chooses each study's task from its content (synthesis where it has a DICOM
SEG, else denoising) and writes one folder per new series, and its run report (deploy_app/motfm_deploy/report.py):
the series it wrote, each with its study, and the problems, each with the input files it concerns, whose paths name
the study's folder. The app exits 1 when some inputs were bad but still writes the good series. A run that crashes,
times out or leaves no report, with several studies, runs each study alone, so that only the study that causes it
fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import NodeConfig
from .spool import Spool, SpooledStudy, flush_tree

logger = logging.getLogger(__name__)
# the app dies with the node, even with kill -9 (util-linux setpriv sets the parent-death signal)
PARENT_DEATH = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


class Stopped(Exception):
    """The node is stopping: the run was ended and its studies stay in the queue."""


def read_report(path: Path) -> dict[str, Any] | None:
    """The app's run report at ``path``; None when there is none, or it is not one."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = {"exit_status", "error", "series", "problems"}
    return report if isinstance(report, dict) and keys <= set(report) else None


@dataclass
class Run:
    """One run of the deploy app: how it ended, its log and its run report (None if it wrote none)."""

    returncode: int | None  # None: stopped after the timeout
    log: str
    seconds: float
    report: dict[str, Any] | None

    @property
    def crashed(self) -> str | None:
        """How the run ended abnormally, or None when it ended as the app does (0, or 1 with problems, and its
        report saying so)."""
        if self.returncode is None:
            return "was stopped after the timeout"
        if self.returncode < 0:
            return f"was killed by {signal.Signals(-self.returncode).name}"
        if self.returncode not in (0, 1):
            return f"exited with status {self.returncode}"
        if self.report is None or self.report["exit_status"] != self.returncode:
            return f"exited with status {self.returncode} without its run report"
        return None

    def series(self, study: str) -> list[dict[str, Any]]:
        """The report's series of the study with Study Instance UID ``study``."""
        return [s for s in self.report["series"] if s["study_instance_uid"] == study] if self.report else []

    def problems(self, folder: Path) -> list[str]:
        """The report's problems with files in ``folder`` (a study's input), each naming its file."""
        folder = folder.resolve()
        found = self.report["problems"] if self.report else []
        return [p["message"] for p in found if any(Path(f).resolve().is_relative_to(folder) for f in p["files"])]

    def failure(self, problems: list[str]) -> str:
        """Why a study of this run has no series: the run's end, else the ``problems`` naming its files, else the
        error the run ended with."""
        if self.crashed:
            return f"the deploy app {self.crashed}: {self.last_words}"
        return "; ".join(problems) or f"the deploy app wrote no series for it: {self.report['error']}"

    @property
    def last_words(self) -> str:
        """The log's last error line (or last line): why a run ended abnormally."""
        lines = [line.strip() for line in self.log.splitlines() if line.strip()]
        errors = [line for line in lines if "[ERROR]" in line or "Error" in line]
        return (errors or lines or ["(no output)"])[-1]


class Processor:
    """Takes complete studies from the queue, up to ``batch_studies`` at a time, runs the deploy app on them and
    moves each to the outbox with its new series, or to ``failed`` with the reason."""

    def __init__(self, config: NodeConfig, spool: Spool, stop: threading.Event) -> None:
        self.config, self.spool, self.stop = config, spool, stop

    def step(self) -> bool:
        """Processes one batch; False when the queue is empty."""
        batch, uids = [], set()
        for study in self.spool.studies("queue"):
            if study.uid not in uids and len(batch) < self.config.batch_studies:
                batch.append(study)
                uids.add(study.uid)
        if not batch:
            return False
        try:
            self.process(batch)
        except Stopped:
            raise
        except Exception as e:  # a fault of the node, not of the app: set the studies aside, go on
            logger.exception(f"processing {', '.join(study.uid for study in batch)} failed")
            for study in (study for study in batch if study.path.is_dir()):
                self.spool.move(study, "failed", error=f"the node could not process it: {type(e).__name__}: {e}")
        return True

    def process(self, studies: list[SpooledStudy]) -> None:
        """Runs the app on ``studies`` (their inputs linked into one input folder) and files the results."""
        work = self.spool.work / f"run-{uuid.uuid4().hex[:12]}"
        for study in studies:
            shutil.rmtree(study.path / "output", ignore_errors=True)  # left by a run the node did not finish
            (work / "in" / study.name).mkdir(parents=True)
            for file in study.files("input"):
                os.link(file, work / "in" / study.name / file.name)
        logger.info(f"processing a batch of {len(studies)}: {', '.join(study.uid for study in studies)}")
        try:
            run = self.run_app(work)
            if run.crashed and len(studies) > 1:
                logger.warning(f"the deploy app {run.crashed} on {len(studies)} studies: processing each alone")
                for study in studies:
                    self.process([study])
                return
            for study in studies:
                self.file(study, run, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def run_app(self, work: Path) -> Run:
        """``python APP -i work/in -o work/out -m MODEL``, its output in ``work/app.log``, its run report in
        ``work/report.json`` (MOTFM_RUN_REPORT)."""
        command = [*PARENT_DEATH, sys.executable, str(self.config.app)]
        command += ["-i", str(work / "in"), "-o", str(work / "out"), "-m", str(self.config.model)]
        start, returncode = time.monotonic(), None
        with open(work / "app.log", "wb") as log:
            app = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=work,
                env={**os.environ, **self.config.app_env, "MOTFM_RUN_REPORT": str(work / "report.json")},
            )
            while (returncode := app.poll()) is None:
                if self.stop.wait(0.5):
                    app.kill()
                    app.wait()
                    raise Stopped
                if time.monotonic() - start > self.config.app_timeout_seconds:
                    app.kill()
                    app.wait()
                    break
        seconds = time.monotonic() - start
        log = (work / "app.log").read_text(errors="replace")
        return Run(returncode, log, seconds, read_report(work / "report.json"))

    def file(self, study: SpooledStudy, run: Run, work: Path) -> None:
        """Moves the study to the outbox with its series (and the problems that name its files), or to ``failed``."""
        shutil.copy(work / "app.log", study.path / "app.log")
        own, series = run.problems(work / "in" / study.name), run.series(study.uid)
        if run.crashed or not series:
            error = run.failure(own)
            self.spool.move(study, "failed", error=error, app_seconds=round(run.seconds, 1))
            logger.error(f"study {study.uid} FAILED, moved to {self.spool.root / 'failed' / study.name}: {error}")
            return
        out = (work / "out").resolve()
        folders = [Path(s["path"]).resolve() for s in series]
        if any(folder.parent != out for folder in folders):
            raise ValueError(f"the deploy app's run report names series outside its output folder {out}")
        (study.path / "output").mkdir()
        for folder in folders:
            os.rename(folder, study.path / "output" / folder.name)
        flush_tree(study.path / "output")
        made = [{"uid": s["series_instance_uid"], "instances": s["instances"]} for s in series]
        self.spool.move(
            study, "outbox", series=made, problems=own or None, error=None, app_seconds=round(run.seconds, 1)
        )
        also = f"; {len(own)} problems: {'; '.join(own)}" if own else ""
        logger.info(f"study {study.uid}: {len(made)} new series to send{also}")
