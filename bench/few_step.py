"""The few-step frontier: quality against NFE of the base flow model, its OT-coupled fine-tune and its reflow.

From one base flow model, three models are fine-tuned for the same number of epochs (an epoch is one pass over
the training cases for all three, so they get the same iterations of extra training):

- control: ``train.json`` from the base weights, independent noise (what more training alone gives);
- ot: the same with exact minibatch optimal-transport coupling of noise and images (``coupling exact``);
- reflow: ``reflow.json`` with the base model as teacher (pairs of noise and the teacher's images).

Each model (and the base) then samples the test split at every NFE of ``nfe`` with Euler and, at the even ones,
midpoint (which never evaluates the network at t = 1), through the bundle's inference and evaluation configs
(``bench/sampling.py``'s ``sample_and_evaluate``); the base also with adaptive dopri5 (its NFE as used), and the
DDPM baseline at ``ddpm_steps`` when its checkpoint is given. Writes ``few_step.json``, ``few_step.md`` (the table
and the 2-NFE goal: each model at 2 NFE against the base at 10 Euler NFE and DDPM) and ``few_step.png`` (quality
against NFE) into ``out_dir``. Fine-tuned models stay in
``work_dir``: a rerun resumes or reuses them (and the reflow pairs).

    python bench/few_step.py --base_ckpt bundle/models/model.pt --ddpm_ckpt bundle/models/model_ddpm.pt
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import fire
import torch
from records import machine, workflow
from sampling import QUALITY, ROOT, sample_and_evaluate

from scripts.checkpoint import read_checkpoint
from scripts.visualize import plt

# metrics of the 2-NFE goal and whether higher is better
GOAL = {"psnr_paired": True, "ssim_paired": True, "mask_dice": True, "hist_wasserstein": False}
FIXED = ("euler", "midpoint")  # the fixed-step solvers of the sweep
FINETUNES = {
    "control": (["train.json"], {}),
    "ot": (["train.json"], {"coupling": "exact"}),
    "reflow": (["train.json", "reflow.json"], {}),
}


def finetune(name: str, base_ckpt: str, work_dir: str, epochs: int, overrides: dict) -> tuple[str, float]:
    """Trains the fine-tune ``name`` of ``FINETUNES`` from ``base_ckpt`` (resuming in ``work_dir/name``);
    returns (its model file, seconds taken)."""
    configs, settings = FINETUNES[name]
    start = time.perf_counter()
    workflow(
        configs,
        output_dir=os.path.join(work_dir, name),
        init_ckpt=base_ckpt,
        teacher_ckpt=base_ckpt,
        intensity_range=read_checkpoint(base_ckpt)["card"]["intensity_range"],
        **{"train#trainer#max_epochs": epochs, **settings, **overrides},
    ).run()
    return os.path.join(work_dir, name, "model.pt"), time.perf_counter() - start


def goal(rows: list[dict]) -> list[dict]:
    """Each flow model and solver at 2 NFE against the references (the base at 10 Euler NFE, DDPM): per metric,
    its value and whether it is at least as good as each reference."""
    refs = {"base, 10 NFE": _find(rows, model="base", solver="euler", nfe=10)}
    ddpm = [r for r in rows if r["model"] == "ddpm" and r["solver"] == "ddpm"]
    if ddpm:
        refs[f"DDPM, {ddpm[-1]['nfe']} steps"] = ddpm[-1]
    out = []
    for row in (r for r in rows if r["model"] != "ddpm" and r["nfe"] == 2):
        entry = {"model": row["model"], "solver": row["solver"]}
        for metric, higher in GOAL.items():
            entry[metric] = row[metric]
            for name, ref in refs.items():
                if ref and row[metric] is not None and ref[metric] is not None:
                    entry[f"{metric} vs {name}"] = row[metric] >= ref[metric] if higher else row[metric] <= ref[metric]
        out.append(entry)
    return out


def _find(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tables(rows: list[dict], goals: list[dict]) -> str:
    """The results and the goal as Markdown tables."""
    head = ["model", "solver", "NFE", *QUALITY, "s/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["solver"], r["nfe"], *(r[k] for k in QUALITY), r["seconds_per_sample"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if goals:
        keys = list(goals[0])
        lines += ["", "At 2 NFE, at least as good as the reference:", ""]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(g.get(k)) for k in keys) + " |" for g in goals]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    """Each goal metric against NFE: one line per flow model and fixed-step solver, dopri5 as a point, DDPM as a
    level."""
    fig, axes = plt.subplots(1, len(GOAL), figsize=(4 * len(GOAL), 3.6))
    for ax, metric in zip(axes, GOAL):
        for model, solver in dict.fromkeys((r["model"], r["solver"]) for r in rows if r["solver"] in FIXED):
            line = sorted((r["nfe"], r[metric]) for r in rows if (r["model"], r["solver"]) == (model, solver))
            ax.plot(*zip(*line), marker="o", linestyle="-" if solver == "euler" else ":", label=f"{model} {solver}")
        for r in (r for r in rows if r["solver"] not in FIXED and r[metric] is not None):
            label = f"{r['model']} {r['solver']}, {r['nfe']} NFE"
            if r["model"] == "ddpm":
                ax.axhline(r[metric], color="gray", linestyle="--", label=label)
            else:
                ax.plot(r["nfe"], r[metric], marker="s", linestyle="none", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(metric + ("" if GOAL[metric] else " (lower is better)"))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    base_ckpt: str = str(ROOT / "bundle/models/model.pt"),
    ddpm_ckpt: str | None = None,
    out_dir: str = "results/few_step",
    work_dir: str = "results/few_step",
    finetune_epochs: int = 50,
    nfe: tuple = (1, 2, 4, 10),
    adaptive: bool = True,
    ddpm_steps: int = 1000,
    overrides: str = "{}",
) -> None:
    """Runs the benchmark.

    Args:
        base_ckpt: the trained flow model: the base, the fine-tunes' start and reflow's teacher.
        ddpm_ckpt: the DDPM baseline's model file (None: no DDPM row).
        work_dir: where the fine-tuned models (and reflow's pairs) are trained; a rerun resumes or reuses them.
        finetune_epochs: epochs of each fine-tune (the same for all three).
        nfe: NFE values of every flow model (Euler at all, midpoint at the even ones).
        adaptive: also sample the base with dopri5 and report the NFE it used.
        ddpm_steps: DDPM ancestral steps of the baseline row.
        overrides: JSON dict of bundle config overrides for every run (e.g. a datalist, a tiny network, the reflow
            pair settings ``pairs_per_case`` / ``pair_solver`` / ``pair_steps``).
    """
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    models, train_seconds = {"base": base_ckpt}, {}
    for name in FINETUNES:
        models[name], train_seconds[name] = finetune(name, base_ckpt, work_dir, finetune_epochs, extra)
    settings = [(name, "euler", n) for name in models for n in nfe]  # (model, solver, steps)
    settings += [(name, "midpoint", n // 2) for name in models for n in nfe if n % 2 == 0]
    settings += [("base", "dopri5", 1)] if adaptive else []
    settings += [("ddpm", "ddpm", ddpm_steps)] if ddpm_ckpt else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = workflow(["inference.json", "evaluate.json"], ckpt_path=base_ckpt, **extra)
        sample_overrides = {"batch_size": len(cases.parser.get_parsed_content("real_cases")), **extra}
        for i, (model, solver, steps) in enumerate(settings):
            method = "ddpm" if model == "ddpm" else "flow"
            setting = {"method": method, "solver": solver, "num_steps": steps, "nfe": None}
            ckpt = ddpm_ckpt if model == "ddpm" else models[model]
            rows.append({"model": model, **sample_and_evaluate(setting, ckpt, f"{tmp}/run{i}", sample_overrides)})
            print(f"{model} {solver} NFE {rows[-1]['nfe']}: {rows[-1]['seconds_per_sample']} s/sample", flush=True)
    goals = goal(rows)
    results = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "command": " ".join(["python", *sys.argv]),
        "checkpoints": {**models, "ddpm": ddpm_ckpt},
        "finetune_epochs": finetune_epochs,
        "finetune_seconds": train_seconds,
        "rows": rows,
        "goal": goals,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "few_step.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = tables(rows, goals)
    with open(os.path.join(out_dir, "few_step.md"), "w") as f:
        f.write(text)
    plot(rows, os.path.join(out_dir, "few_step.png"))
    print(text)


if __name__ == "__main__":
    fire.Fire(main)
