"""Speed and quality of flow matching against the DDPM baseline, measured in one run on one machine.

Flow matching at 1, 2, 4 and 10 NFE (Euler; midpoint at the even ones) and the DDPM baseline (ancestral at 1000
steps, DDIM at 10, 50 and 250), each generating the test split through the bundle's own inference and evaluation
configs, then:

- quality: the evaluation metrics with their 95% intervals (feature-space Frechet distance and KID, MMD, mask Dice,
  histogram distance, conditional diversity, paired SSIM/PSNR for what they are worth);
- cost: seconds per sample and the sampler overhead ratio = sampling time / (NFE x one bare network forward
  on the same batch);
- training: seconds per iteration of the bundle's trainer against a bare PyTorch loop on the same network and
  batch (trainer overhead ratio).

Writes ``sampling.json`` (one record), ``quality_vs_nfe.png``
and ``quality_vs_seconds.png`` into ``out_dir``. Each setting's result is kept in ``work_dir`` with the settings and
checkpoint digests it depends on: rerun the same command after an interruption and it goes on from the first
setting not yet measured (DDPM's 1000 steps take hours on a CPU; ``--case_stride`` samples every k-th test slice).

    python bench/sampling.py                                     # the default sweep on the test split
    python bench/sampling.py --out_dir bundle/docs/records       # to update the documented record
    python bench/sampling.py --ddpm_steps 0 --ddim_steps "(10,50)"   # a quicker one; see --help for every flag
    python bench/sampling.py --case_stride 4 --out_dir bundle/docs/records   # the documented run (every 4th slice)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import fire
import torch
from ignite.engine import Events
from records import ROOT, generate_and_evaluate, one_batch, publish, resumable, run_info, test_subset, workflow
from tables import SHARPNESS_KEYS, sampling_table

from scripts.batches import GenerativePrepareBatch, conditions
from scripts.checkpoint import read_checkpoint
from scripts.data import load_batch
from scripts.flow import FlowPath
from scripts.provenance import file_sha256
from scripts.visualize import plt

QUALITY = (
    "fd_segmenter_features",
    "kid_segmenter_features",
    "mmd",
    "mask_dice",
    "mask_dice_real",
    "hist_wasserstein",
    "conditional_ms_ssim",
    "ssim_paired",
    "psnr_paired",
    *SHARPNESS_KEYS,
)
PLOTTED = ("fd_segmenter_features", "mask_dice", "hist_wasserstein")


def settings(nfe, ddim_steps, ddpm_steps) -> list[dict]:
    """Every sampler setting of the sweep: method, solver, steps and the NFE they cost."""
    rows = [{"method": "flow", "solver": "euler", "num_steps": n, "nfe": n} for n in nfe]
    rows += [{"method": "flow", "solver": "midpoint", "num_steps": n // 2, "nfe": n} for n in nfe if n >= 2]
    rows += [{"method": "ddpm", "solver": "ddim", "num_steps": n, "nfe": n} for n in ddim_steps]
    rows += [
        {"method": "ddpm", "solver": "ddpm", "num_steps": n, "nfe": n} for n in ([ddpm_steps] if ddpm_steps else [])
    ]
    return rows


def bare_forward_seconds(network, batch: dict, shape, repeats: int = 3) -> float:
    """Seconds of one bare network call on ``batch`` (no solver, no guidance), the best of ``repeats``."""
    device = next(network.parameters()).device
    x = torch.randn(len(batch["index"]), *shape, device=device)
    cond = conditions(batch, bool(network.num_labels), network.num_classes, device)
    t = torch.full((len(x),), 500.0, device=device)
    best = float("inf")
    with torch.no_grad():
        network(x, t, **cond)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            network(x, t, **cond)
            best = min(best, time.perf_counter() - start)
    return best


def sample_and_evaluate(setting: dict, ckpt: str, out: str, overrides: dict) -> dict:
    """Runs the bundle's inference + evaluation for one setting; returns its metrics and timings."""
    result, wf = generate_and_evaluate(
        setting["method"], out, ckpt_path=ckpt, solver=setting["solver"], num_steps=setting["num_steps"], **overrides
    )
    parser = wf.parser
    network, cases = parser.get_parsed_content("network"), parser.get_parsed_content("cases")
    batch = load_batch(cases[: parser.get_parsed_content("batch_size")], parser.get_parsed_content("transforms"))
    forward = bare_forward_seconds(network, batch, [1, *parser.get_parsed_content("image_size")])
    per_batch = result["seconds_per_sample"] * len(batch["index"])
    result["sampler_overhead"] = per_batch / (result["nfe"] * forward)
    keys = (*QUALITY, "ci95", "nfe", "seconds_per_sample", "sampler_overhead", "device")  # NFE used (adaptive solvers)
    return {**setting, **{k: result.get(k) for k in keys}}


def resumable_sample_and_evaluate(setting: dict, ckpt: str, run: Path, overrides: dict) -> dict:
    """``sample_and_evaluate`` into ``run``, its result kept there with the setting, the checkpoint's SHA-256 and the
    overrides (``records.resumable``): a rerun with the same ones reads it back instead of sampling again."""
    key = {**setting, "checkpoint_sha256": file_sha256(ckpt), "overrides": overrides}
    return resumable(run, key, sample_and_evaluate, setting, ckpt, str(run), overrides)


def training_overhead(ckpt_dir: str, iterations: int, overrides: dict) -> dict:
    """Seconds per iteration in the steady state (after a first, warm-up iteration each): the bundle's trainer
    (data pipeline with augmentation, EMA, LR schedule, handlers) vs a bare loop on one batch."""
    wf = workflow(
        ["train.json"],
        output_dir=ckpt_dir,
        preview_interval=10**6,
        checkpoint_interval=10**6,
        **{"train#trainer#max_epochs": 1, "train#trainer#epoch_length": iterations, **overrides},
    )
    parser = wf.parser
    stamps = []
    parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_COMPLETED, lambda _: stamps.append(time.perf_counter())
    )
    wf.run()
    ours = (stamps[-1] - stamps[0]) / (iterations - 1)

    network, optimizer = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    prepare = GenerativePrepareBatch(FlowPath(), parser["num_labels"] > 0, parser["num_classes"])
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    device = parser.get_parsed_content("device")
    for i in range(iterations):
        if i == 1:
            start = time.perf_counter()
        x_t, target, _, kwargs = prepare(batch, device)
        loss = torch.nn.functional.mse_loss(network(x_t, **kwargs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    bare = (time.perf_counter() - start) / (iterations - 1)
    return {"trainer_seconds_per_iteration": ours, "bare_seconds_per_iteration": bare, "trainer_overhead": ours / bare}


def plot(rows: list[dict], out_dir: str) -> None:
    """Quality against NFE and against seconds per sample, one line per method and solver."""
    for x_key, name in (("nfe", "quality_vs_nfe.png"), ("seconds_per_sample", "quality_vs_seconds.png")):
        fig, axes = plt.subplots(1, len(PLOTTED), figsize=(13, 3.6))
        for ax, metric in zip(axes, PLOTTED):
            for key in dict.fromkeys((r["method"], r["solver"]) for r in rows):
                line = sorted((r[x_key], r[metric]) for r in rows if (r["method"], r["solver"]) == key)
                if line and line[0][1] is not None:
                    ax.plot(*zip(*line), marker="o", label=" ".join(key))
            ax.set_xscale("log")
            ax.set_xlabel("NFE" if x_key == "nfe" else "seconds per sample")
            ax.set_title(metric)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)


def main(
    flow_ckpt: str = str(ROOT / "bundle/models/model.pt"),
    ddpm_ckpt: str = str(ROOT / "bundle/models/model_ddpm.pt"),
    out_dir: str = "results/sampling",
    work_dir: str = "results/sampling_runs",
    nfe: tuple = (1, 2, 4, 10),
    ddim_steps: tuple = (10, 50, 250),
    ddpm_steps: int = 1000,
    case_stride: int = 1,
    train_iterations: int = 30,
    overrides: str = "{}",
) -> None:
    """Runs the benchmark.

    Args:
        flow_ckpt, ddpm_ckpt: the two models (trained alike; the shipped ones by default).
        out_dir: where the record, table and plots go; work_dir: each setting's samples and result (kept to resume).
        nfe: flow NFE values (midpoint runs at the even ones).
        ddim_steps: DDIM step counts; ddpm_steps: DDPM ancestral steps (0 to skip).
        case_stride: sample every ``case_stride``-th case of the test split (1: all of them).
        train_iterations: iterations of the trainer-overhead measurement (the first of each loop is not timed).
        overrides: JSON dict of bundle config overrides (e.g. a datalist or a tiny network for tests).
    """
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    models = {"flow": flow_ckpt, "ddpm": ddpm_ckpt}
    work = Path(work_dir).resolve()
    sample_overrides = one_batch(test_subset(extra, case_stride, work), flow_ckpt)
    rows = []
    for setting in settings(nfe, ddim_steps, ddpm_steps):
        name = f"{setting['method']}-{setting['solver']}-{setting['nfe']}"
        rows.append(resumable_sample_and_evaluate(setting, models[setting["method"]], work / name, sample_overrides))
        print(f"{name}: {rows[-1]['seconds_per_sample']} s per sample")
    with tempfile.TemporaryDirectory() as tmp:  # a fresh run: the trainer would resume one it finds
        training = training_overhead(tmp, train_iterations, extra)
    record = {
        **run_info("sampling"),
        "device": rows[0]["device"] if rows else None,
        "case_stride": case_stride,
        "models": {name: read_checkpoint(path)["card"].get("provenance", {}) for name, path in models.items()},
        "rows": rows,
        "training": training,
    }
    os.makedirs(out_dir, exist_ok=True)
    publish(record, out_dir, sampling_table)
    plot(rows, out_dir)


if __name__ == "__main__":
    fire.Fire(main)
