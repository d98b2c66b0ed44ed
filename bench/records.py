"""A benchmark's records: the machine it ran on, and its result printed and saved as JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def machine() -> str:
    """The device (the GPU's name, else the CPU's), its cores and their load, torch's threads and version."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        device = names[0] if names else platform.processor() or platform.machine()
    return (
        f"{device}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def save(result: dict, out: str) -> None:
    """Prints ``result`` and writes it as JSON to the file ``out`` (its folder made if missing)."""
    text = json.dumps(result, indent=1)
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)


def workflow(configs: list[str], **overrides):
    """An initialised bundle workflow from config files under bundle/configs (later files override earlier)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], workflow_type=None, logging_file=False, **overrides
    )
    wf.initialize()
    return wf
