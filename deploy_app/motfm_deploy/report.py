"""The run report: what one run of the app wrote and what it could not use, for the programs that run it.

The app writes it when the run ends, however it ends, to the file MOTFM_RUN_REPORT names, else into the output
folder (``REPORT_FILE``), whole (a temporary file renamed into place): a reader finds the previous run's report or
this one's, never part of one:

    {
      "exit_status": 0 or 1 (the app's exit status),
      "error": null, or why the run ended in error (the log's last line),
      "series": [{"series_instance_uid", "study_instance_uid", "task", "path", "instances", "source"}, ...],
      "problems": [{"files": [the input files it concerns], "message": "what is wrong, naming the file"}, ...]
    }

A run with problems still writes the series it could make (exit status 1). ``path`` is the series' folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .jobs import Job

REPORT_FILE = "motfm_run.json"


@dataclass
class Problem:
    """Input a run could not use: the files concerned, and why (the message names them)."""

    files: list[str]
    message: str


@dataclass
class RunReport:
    """The report of one run, filled in by the operators; ``write`` saves it."""

    series: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add_series(self, job: Job, folder: Path) -> None:
        """Records the series written for ``job`` to ``folder``."""
        self.series.append(
            {
                "series_instance_uid": folder.name,
                "study_instance_uid": str(job.planes[0].dataset.StudyInstanceUID),
                "task": job.task,
                "path": str(folder),
                "instances": len(job.planes),
                "source": job.name,
            }
        )

    def write(self, path: Path, exit_status: int, error: str | None) -> None:
        """Writes the report to ``path`` whole: a temporary file beside it, flushed, then renamed."""
        content = {
            "exit_status": exit_status,
            "error": error,
            "series": self.series,
            "problems": [asdict(p) for p in self.problems],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(content, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
