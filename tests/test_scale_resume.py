"""Exact resume: ``python -m monai.bundle run`` killed with SIGKILL in the middle of training and run again with the
same command ends with the weights, moving average, optimizer and learning rate of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scale_worker import run_job

from conftest import CONFIGS, ROOT, TINY_2D
from scripts.training import lr_factor

EPOCHS = 8  # of 2 steps (8 slices, batch 4)
CONFIG_FILES = ["train.json", "variants/mask_class_2d.json"]


def _overrides(data_dir: Path, small_datalist: Path, out: Path) -> dict:
    return {
        **TINY_2D,
        "dataset_dir": str(data_dir),
        "datalist": str(small_datalist),
        "output_dir": str(out),
        "seed": 3,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "lr_warmup": 3,
        "batch_size": 4,
        "train#trainer#max_epochs": EPOCHS,
        "preview_interval": 3,
        "checkpoint_interval": 1,
    }


def _command(overrides: dict) -> list[str]:
    files = str([str(CONFIGS / c) for c in CONFIG_FILES])
    args = [item for key, value in overrides.items() for item in (f"--{key}", repr(value))]
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args]


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_killed_run_resumes_to_the_uninterrupted_result(data_dir, small_datalist, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_job({"configs": CONFIG_FILES, "overrides": _overrides(data_dir, small_datalist, whole)})

    command = _command(_overrides(data_dir, small_datalist, killed))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same arithmetic as this process
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-epoch 2, or while writing the next checkpoint
    assert process.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert _checkpoint(killed)["trainer"]["iteration"] < 2 * EPOCHS  # killed before the end

    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resumed from" in done.stdout

    a, b = _checkpoint(whole), _checkpoint(killed)
    assert a["trainer"] == b["trainer"] and a["trainer"]["iteration"] == 2 * EPOCHS
    for name in ("network", "ema"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    last_lr = 1e-3 * lr_factor(2 * EPOCHS - 1, "cosine", 3, 2 * EPOCHS)  # that of the last iteration
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(last_lr)
    assert all(
        torch.equal(x, y)
        for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
        for x, y in zip(s.values(), t.values())
    )
    model_a, model_b = (torch.load(out / "model.pt", weights_only=True) for out in (whole, killed))
    assert all(torch.equal(model_a["ema"][k], model_b["ema"][k]) for k in model_a["ema"])
