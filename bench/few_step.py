"""The few-step frontier: quality against NFE of the base flow model and of few-step models made from it.

From one base flow model, fine-tunes run for the same number of epochs (an epoch is one pass over the training cases
for each, so they get the same iterations of extra training):

- control: ``train.json`` from the base weights, independent noise (what more training alone gives);
- ot: the same with exact minibatch optimal-transport coupling of noise and images (``coupling exact``). The coupling
  pairs noise with images of one condition only, and with mask conditioning every mask is a condition of its own:
  for a mask-conditioned base the arm is skipped, and the record says so under ``skipped``;
- reflow: ``reflow.json`` with the base model as teacher (pairs of noise and the teacher's images);
- consistency: ``distill.json`` with the base model as teacher (consistency distillation: a one-step model).

Each model (and the base) then samples the test split (every ``case_stride``-th case) at every NFE of ``nfe`` with
Euler and, at the even ones, midpoint (which never evaluates the network at t = 1), through the bundle's inference and
evaluation configs (``bench/sampling.py``'s ``sample_and_evaluate``); the base also with adaptive dopri5 (its NFE as
used), and the DDPM baseline at ``ddpm_steps`` when its checkpoint is given.

The goal (issue 12): a model at 1 NFE (and at 2) within 10% of the base at 10 Euler NFE on the feature-space
Frechet distance (at most 1.1 x the base's) and on mask Dice (at least 0.9 x the base's). PSNR, SSIM and the
histogram distance are in the table for what they are worth.

Writes ``few_step.json`` (the record) and
``few_step.png`` (quality against NFE) into ``out_dir``. Fine-tunes train in ``work_dir/<name>`` and each sampler
setting's result is kept in ``work_dir/samples/<setting>`` with the settings and checkpoint digests it depends on: a
rerun of the same command resumes an unfinished fine-tune, reuses a finished one untouched, and goes on from the first
setting not yet measured.

    python bench/few_step.py --ddpm_ckpt bundle/models/model_ddpm.pt --case_stride 4 --work_dir runs/few_step
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import fire
from records import ROOT, one_batch, publish, run_info, test_subset, workflow
from sampling import resumable_sample_and_evaluate, settings
from tables import few_step_table

from scripts.checkpoint import read_checkpoint
from scripts.visualize import plt

FIXED = ("euler", "midpoint")  # the fixed-step solvers of the sweep
FINETUNES = {
    "control": (["train.json"], {}),
    "ot": (["train.json"], {"coupling": "exact"}),
    "reflow": (["train.json", "reflow.json"], {}),
    "consistency": (["train.json", "distill.json"], {}),
}
GOAL = {"fd_segmenter_features": False, "mask_dice": True}  # the goal's metrics and whether higher is better
TOLERANCE = 0.1  # "within 10%" of the base at 10 NFE
GOAL_NFE = (1, 2)
REFERENCE = {"model": "base", "solver": "euler", "nfe": 10}
PLOTTED = ("fd_segmenter_features", "mask_dice", "hist_wasserstein", "psnr_paired")


def arms(base_ckpt: str, only: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The fine-tunes of ``FINETUNES`` that apply to the base model (of ``only``, where given), and why the others
    are skipped."""
    unknown = sorted(set(only or ()) - set(FINETUNES))
    if unknown:
        raise ValueError(f"unknown fine-tunes {unknown}: choose from {list(FINETUNES)}")
    names = [name for name in FINETUNES if only is None or name in only]
    num_labels = read_checkpoint(base_ckpt)["card"]["network"].get("num_labels") or 0
    if num_labels and "ot" in names:
        reason = (
            f"the base model is mask-conditioned ({num_labels} labels): minibatch OT coupling pairs noise within one "
            "condition, and every mask is a condition of its own"
        )
        return [name for name in names if name != "ot"], {"ot": reason}
    return names, {}


def finetune(name: str, base_ckpt: str, work_dir: Path, epochs: int, overrides: dict) -> tuple[str, dict]:
    """Trains the fine-tune ``name`` of ``FINETUNES`` from ``base_ckpt`` in ``work_dir/name``, resuming an unfinished
    run; a finished one (``epochs`` reached) is reused untouched, so its file and digest stay. Returns (its model
    file, what its card says of its training: iterations, epochs, seconds)."""
    configs, arm_overrides = FINETUNES[name]
    model = work_dir / name / "model.pt"
    if not model.is_file() or read_checkpoint(str(model))["card"]["provenance"].get("epochs", 0) < epochs:
        workflow(
            configs,
            output_dir=str(work_dir / name),
            init_ckpt=base_ckpt,
            teacher_ckpt=base_ckpt,
            intensity_range=read_checkpoint(base_ckpt)["card"]["intensity_range"],
            **{"train#trainer#max_epochs": epochs, **arm_overrides, **overrides},
        ).run()
    provenance = read_checkpoint(str(model))["card"]["provenance"]
    return str(model), {k: provenance.get(k) for k in ("iterations", "epochs", "training_seconds")}


def sampler_settings(models: list[str], nfe, adaptive: bool, ddpm_steps: int | None) -> list[tuple[str, dict]]:
    """(model, setting) of every run: each flow model with ``sampling.settings``' flow rows (Euler at every NFE,
    midpoint at the even ones), the base with dopri5 (NFE as used), DDPM ancestral at ``ddpm_steps`` (None: none)."""
    runs = [(model, setting) for model in models for setting in settings(nfe, (), 0)]
    runs += [("base", {"method": "flow", "solver": "dopri5", "num_steps": 1, "nfe": None})] if adaptive else []
    return runs + [("ddpm", setting) for setting in settings((), (), ddpm_steps or 0)]


def goal(rows: list[dict], tolerance: float = TOLERANCE) -> dict:
    """Each flow model's fixed-step rows at ``GOAL_NFE`` against ``REFERENCE`` (the base at 10 Euler NFE): per goal
    metric, its value, its ratio to the reference's, and whether it is within ``tolerance`` (a lower-is-better
    metric at most (1 + tolerance) x the reference's, a higher-is-better one at least (1 - tolerance) x); ``met``:
    all of them. None where a metric or the reference is missing (e.g. no segmenter)."""
    ref = next((r for r in rows if all(r[k] == v for k, v in REFERENCE.items())), None)
    entries = []
    for row in rows:
        if row["model"] == "ddpm" or row["solver"] not in FIXED or row["nfe"] not in GOAL_NFE:
            continue
        entry = {"model": row["model"], "solver": row["solver"], "nfe": row["nfe"]}
        for metric, higher in GOAL.items():
            value, base = row.get(metric), (ref or {}).get(metric)
            ratio = value / base if value is not None and base else None
            entry[metric], entry[f"{metric}_ratio"] = value, ratio
            entry[f"{metric}_within"] = (
                None if ratio is None else (ratio >= 1 - tolerance if higher else ratio <= 1 + tolerance)
            )
        checks = [entry[f"{metric}_within"] for metric in GOAL]
        entry["met"] = None if None in checks else all(checks)
        entries.append(entry)
    return {"reference": REFERENCE, "tolerance": tolerance, "reference_found": ref is not None, "rows": entries}


def plot(rows: list[dict], path: Path) -> None:
    """Each plotted metric against NFE: one line per flow model and fixed-step solver, dopri5 as a point, DDPM as a
    level; metrics the run has no value of are left empty."""
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.6))
    for ax, metric in zip(axes, PLOTTED):
        for model, solver in dict.fromkeys((r["model"], r["solver"]) for r in rows if r["solver"] in FIXED):
            line = sorted(
                (r["nfe"], r[metric])
                for r in rows
                if (r["model"], r["solver"]) == (model, solver) and r.get(metric) is not None
            )
            if line:
                style = "-" if solver == "euler" else ":"
                ax.plot(*zip(*line), marker="o", linestyle=style, label=f"{model} {solver}")
        for r in (r for r in rows if r["solver"] not in FIXED and r.get(metric) is not None):
            label = f"{r['model']} {r['solver']}, {r['nfe']} NFE"
            if r["model"] == "ddpm":
                ax.axhline(r[metric], color="gray", linestyle="--", label=label)
            else:
                ax.plot(r["nfe"], r[metric], marker="s", linestyle="none", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(metric)
    next((ax for ax in axes if ax.get_legend_handles_labels()[0]), axes[0]).legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    base_ckpt: str = str(ROOT / "bundle/models/model.pt"),
    ddpm_ckpt: str | None = None,
    out_dir: str = "results/few_step",
    work_dir: str = "results/few_step_runs",
    finetune_epochs: int = 40,
    nfe: tuple = (1, 2, 4, 10),
    adaptive: bool = True,
    ddpm_steps: int = 1000,
    case_stride: int = 1,
    overrides: str = "{}",
    only: str | Sequence[str] | None = None,
) -> None:
    """Runs the benchmark.

    Args:
        base_ckpt: the trained flow model: the base, the fine-tunes' start and the teacher of reflow and distillation.
        ddpm_ckpt: the DDPM baseline's model file (None: no DDPM row).
        out_dir: where the record, its table and the plot go.
        work_dir: the fine-tunes (and reflow's pairs) and each setting's samples and result; a rerun resumes there.
        finetune_epochs: epochs of each fine-tune (the same for all).
        nfe: NFE values of every flow model (Euler at all, midpoint at the even ones); the goal needs 1, 2 and 10.
        adaptive: also sample the base with dopri5 and report the NFE it used.
        ddpm_steps: DDPM ancestral steps of the baseline row.
        case_stride: sample every ``case_stride``-th case of the test split (1: all of them); training uses all.
        overrides: JSON dict of bundle config overrides for every run (e.g. a datalist, a tiny network, the reflow
            pair settings ``pairs_per_case`` / ``pair_solver`` / ``pair_steps``, the distillation's
            ``distill_step`` / ``teacher_solver`` / ``distill_target``).
        only: train only these fine-tunes (comma-separated) and stop: no sampling, no record. One per process trains
            them side by side in one ``work_dir``; the run without it then reuses them.
    """
    start = time.perf_counter()
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    work = Path(work_dir).resolve()
    names, skipped = arms(base_ckpt, only.split(",") if isinstance(only, str) else only)
    models, finetunes = {"base": base_ckpt}, {}
    for name in names:
        models[name], finetunes[name] = finetune(name, base_ckpt, work, finetune_epochs, extra)
    if only:
        return
    sample_overrides = one_batch(test_subset(extra, case_stride, work), base_ckpt)
    flow = list(models)
    if ddpm_ckpt:
        models["ddpm"] = ddpm_ckpt
    rows = []
    for model, setting in sampler_settings(flow, nfe, adaptive, ddpm_steps if ddpm_ckpt else None):
        name = f"{model}-{setting['solver']}-{setting['num_steps']}"
        result = resumable_sample_and_evaluate(setting, models[model], work / "samples" / name, sample_overrides)
        rows.append({"model": model, **result})
        print(f"{name}: NFE {rows[-1]['nfe']}, {rows[-1]['seconds_per_sample']} s per sample", flush=True)
    record = {
        **run_info("few_step"),
        "device": rows[0].get("device") if rows else None,
        "case_stride": case_stride,
        "finetune_epochs": finetune_epochs,
        "checkpoints": models,
        "base": read_checkpoint(base_ckpt)["card"].get("provenance", {}),
        "finetunes": finetunes,
        "skipped": skipped,
        "rows": rows,
        "goal": goal(rows),
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    publish(record, out_dir, few_step_table)
    plot(rows, Path(out_dir) / "few_step.png")


if __name__ == "__main__":
    fire.Fire(main)
