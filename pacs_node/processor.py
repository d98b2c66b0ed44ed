"""Processes complete studies with the deploy app, run as a subprocess on a batch of studies at a time.

A run isolates the node from the model (a crash, a leak, a hung GPU) and loads Python, Holoscan, torch and the
bundle once for the whole batch. The app chooses each study's task from its content (synthesis where it has a DICOM
SEG, else denoising) and writes one folder per new series; each series goes back to the study it belongs to. The
app exits 1 when some inputs were bad but still writes the good series; it lists each problem naming its file, and
the file's path names the study's job. A crash or a timeout of a run with several studies runs each study alone, so
that only the study that causes it fails.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from .config import NodeConfig
from .spool import Job, Spool, flush_tree

logger = logging.getLogger(__name__)
PROBLEMS = re.compile(r"\d+ input problems \(\d+ series written\):")
# the app dies with the node, even with kill -9 (util-linux setpriv sets the parent-death signal)
PARENT_DEATH = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


class Stopped(Exception):
    """The node is stopping: the run was ended and its studies stay in the queue."""


@dataclass
class Run:
    """One run of the deploy app."""

    returncode: int | None  # None: stopped after the timeout
    log: str
    seconds: float

    @property
    def crashed(self) -> str | None:
        """How the run ended abnormally, or None when it ended as the app does (0, or 1 with problems)."""
        if self.returncode is None:
            return "was stopped after the timeout"
        if self.returncode < 0:
            return f"was killed by {signal.Signals(-self.returncode).name}"
        return None if self.returncode in (0, 1) else f"exited with status {self.returncode}"

    @property
    def problems(self) -> list[str]:
        """The problems listed at the end of the app's log (one line each, naming its file)."""
        lines = self.log.splitlines()
        heads = [i for i, line in enumerate(lines) if PROBLEMS.search(line)]
        items = []
        for line in lines[heads[-1] + 1 :] if heads else []:
            if not line.startswith("- "):
                break
            items.append(line[2:])
        return items

    def failure(self, problems: list[str]) -> str:
        """Why a study of this run has no series: the run's end, else the ``problems`` naming its files."""
        if self.crashed:
            return f"the deploy app {self.crashed}: {self.last_words}"
        return "; ".join(problems) or f"the deploy app wrote no series for it: {self.last_words}"

    @property
    def last_words(self) -> str:
        """The log's last error line (or last line): why a run wrote nothing."""
        lines = [line.strip() for line in self.log.splitlines() if line.strip()]
        errors = [line for line in lines if "[ERROR]" in line or "Error" in line]
        return (errors or lines or ["(no output)"])[-1]


class Processor:
    """Takes complete studies from the queue, up to ``batch_studies`` at a time (one job per study), runs the
    deploy app on them and moves each to the outbox with its new series, or to ``failed`` with the reason."""

    def __init__(self, config: NodeConfig, spool: Spool, stop: threading.Event) -> None:
        self.config, self.spool, self.stop = config, spool, stop

    def step(self) -> bool:
        """Processes one batch; False when the queue is empty."""
        batch, studies = [], set()
        for job in self.spool.jobs("queue"):
            if job.study not in studies and len(batch) < self.config.batch_studies:
                batch.append(job)
                studies.add(job.study)
        if not batch:
            return False
        try:
            self.process(batch)
        except Stopped:
            raise
        except Exception as e:  # a fault of the node, not of the app: set the studies aside, go on
            logger.exception(f"processing {', '.join(job.study for job in batch)} failed")
            for job in (job for job in batch if job.path.is_dir()):
                self.spool.move(job, "failed", error=f"the node could not process it: {type(e).__name__}: {e}")
        return True

    def process(self, jobs: list[Job]) -> None:
        """Runs the app on ``jobs`` (their inputs linked into one input folder) and files the results."""
        work = self.spool.work / f"run-{uuid.uuid4().hex[:12]}"
        for job in jobs:
            shutil.rmtree(job.path / "output", ignore_errors=True)  # left by a run the node did not finish
            (work / "in" / job.name).mkdir(parents=True)
            for file in job.files("input"):
                os.link(file, work / "in" / job.name / file.name)
        logger.info(f"processing a batch of {len(jobs)}: {', '.join(job.study for job in jobs)}")
        try:
            run = self.run_app(work)
            if run.crashed and len(jobs) > 1:
                logger.warning(f"the deploy app {run.crashed} on {len(jobs)} studies: processing each alone")
                for job in jobs:
                    self.process([job])
                return
            series = series_by_study(work / "out")
            for job in jobs:
                self.file(job, series.get(job.study, []), run, work / "app.log")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def run_app(self, work: Path) -> Run:
        """``python APP -i work/in -o work/out -m MODEL``, its output in ``work/app.log``."""
        command = [*PARENT_DEATH, sys.executable, str(self.config.app)]
        command += ["-i", str(work / "in"), "-o", str(work / "out"), "-m", str(self.config.model)]
        start, returncode = time.monotonic(), None
        with open(work / "app.log", "wb") as log:
            app = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, **self.config.app_env}
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
        return Run(returncode, (work / "app.log").read_text(errors="replace"), seconds)

    def file(self, job: Job, series: list[Path], run: Run, log: Path) -> None:
        """Moves the job to the outbox with its series (and the problems that name its files), or to ``failed``."""
        shutil.copy(log, job.path / "app.log")
        own = [p for p in run.problems if f"/in/{job.name}/" in p]
        if run.crashed or not series:
            error = run.failure(own)
            self.spool.move(job, "failed", error=error, app_seconds=round(run.seconds, 1))
            logger.error(f"study {job.study} FAILED, moved to {self.spool.root / 'failed' / job.name}: {error}")
            return
        made = [{"uid": folder.name, "instances": len(list(folder.iterdir()))} for folder in series]
        (job.path / "output").mkdir()
        for folder in series:
            os.rename(folder, job.path / "output" / folder.name)
        flush_tree(job.path / "output")
        self.spool.move(job, "outbox", series=made, problems=own or None, error=None, app_seconds=round(run.seconds, 1))
        also = f"; {len(own)} problems: {'; '.join(own)}" if own else ""
        logger.info(f"study {job.study}: {len(made)} new series to send{also}")


def series_by_study(output: Path) -> dict[str, list[Path]]:
    """The app's output series folders by the Study Instance UID of their first instance."""
    studies: dict[str, list[Path]] = {}
    for folder in sorted(output.glob("[!.]*")):  # not the app's staging folders
        first = min(folder.iterdir())
        study = str(dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
        studies.setdefault(study, []).append(folder)
    return studies
