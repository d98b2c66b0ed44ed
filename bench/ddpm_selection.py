"""The DDPM baseline at its best: its noise schedule and prediction type, chosen on the validation subjects.

Every candidate (``NOISE_SCHEDULES`` x ``PREDICTION_TYPES`` of ``scripts.diffusion``) is trained by ``train.json`` +
``train_ddpm.json`` with the shipped flow model's network, data, batch and seed for ``epochs`` epochs, then samples
the validation subjects' masks (every ``case_stride``-th slice) with DDIM at ``num_steps`` and is scored by
``evaluate.json``. The candidates are ranked by the feature-space Fréchet distance (generated against real
validation images, in the segmenter's features), mask Dice beside it. A rerun continues each candidate's training
where it stopped (the runs live in ``work_dir``), so the chosen one can go on to the full budget from its run.
Writes ``ddpm_selection.json`` (one record) into ``out_dir`` and prints its table.

    python bench/ddpm_selection.py                                 # results/ddpm_selection
    python bench/ddpm_selection.py --out_dir bundle/docs/records   # to update the documented record
"""

from __future__ import annotations

import time
from pathlib import Path

import fire
from records import ROOT, generate_and_evaluate, publish, run_info, split_subset, workflow
from tables import ddpm_selection_table

from scripts.diffusion import NOISE_SCHEDULES, PREDICTION_TYPES

RANKED_BY = "fd_segmenter_features"


def main(
    data_dir: str = str(ROOT / "bundle/data"),
    variant: str = "mask_class_2d",
    epochs: int = 3,
    case_stride: int = 4,
    solver: str = "ddim",
    num_steps: int = 50,
    segmenter_path: str = str(ROOT / "bundle/models/segmenter.pt"),
    out_dir: str = "results/ddpm_selection",
    work_dir: str = "results/ddpm_selection_runs",
    seed: int = 0,
    datalist: str | None = None,
    noise_schedules: tuple = tuple(NOISE_SCHEDULES),
    prediction_types: tuple = PREDICTION_TYPES,
    **overrides,
) -> dict:
    """Trains and scores every candidate (``noise_schedules`` x ``prediction_types``); prints and saves the record.
    ``datalist``: default the data set's; ``overrides``: bundle config overrides for training and sampling."""
    out, work = Path(out_dir).resolve(), Path(work_dir).resolve()
    data_dir = str(Path(data_dir).resolve())
    start = time.perf_counter()
    datalist = datalist or f"{data_dir}/datalist_{variant.rsplit('_', 1)[-1]}.json"
    subset = split_subset(datalist, "validation", case_stride, work / "validation_subset.json")
    common = {"dataset_dir": data_dir, "seed": seed, **overrides}
    rows = []
    for noise_schedule in noise_schedules:
        for prediction_type in prediction_types:
            name = f"{noise_schedule}-{prediction_type}"
            run = work / name
            candidate = {"noise_schedule": noise_schedule, "prediction_type": prediction_type}
            trainer = workflow(
                ["train.json", "train_ddpm.json", f"variants/{variant}.json"],
                datalist=datalist,
                output_dir=str(run),
                **{"train#trainer#max_epochs": epochs},
                **candidate,
                **common,
            )
            trainer.run()
            trainer.finalize()
            metrics, _ = generate_and_evaluate(
                "ddpm",
                run / "validation",
                datalist=subset,
                split="validation",
                ckpt_path=str(run / "model.pt"),
                segmenter_path=segmenter_path,
                solver=solver,
                num_steps=num_steps,
                diversity_cases=8,
                variant=variant,
                **common,
            )
            rows.append({**candidate, "metrics": metrics})
    best = min(rows, key=lambda r: r["metrics"][RANKED_BY])
    result = {
        **run_info("ddpm_selection"),
        "settings": {
            "variant": variant,
            "epochs": epochs,
            "case_stride": case_stride,
            "solver": solver,
            "num_steps": num_steps,
            "seed": seed,
            "ranked_by": RANKED_BY,
        },
        "iterations": rows[0]["metrics"].get("model", {}).get("iterations"),
        "chosen": {"noise_schedule": best["noise_schedule"], "prediction_type": best["prediction_type"]},
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    publish(result, out, ddpm_selection_table)
    return result


if __name__ == "__main__":
    fire.Fire(main)
