"""Inter-plane consistency of the 2D model: each test subject's planes generated one by one and stacked.

A 2D model makes each plane of a series on its own, so a stack of its planes can disagree from plane to plane,
which shows as streaks in the sagittal and coronal reformats. The bundle's evaluation measures it as
``interplane_ratio`` (``scripts.metrics.interplane_ratio``: the mean |second difference| along the stack axis over
the in-plane one, for each subject's planes stacked in slice order) beside ``interplane_ratio_real``, the same of the
real planes. This benchmark generates the test split through ``inference.json`` + ``evaluate.json`` with each noise
option (``noise``): ``per_case`` (every plane its own noise) and ``per_subject`` (one noise for all planes of a
subject), and keeps every metric with its 95% interval, so the table also shows what sharing the noise costs in
feature distance, mask Dice and diversity.

Writes ``interplane.json`` (one record) into ``out_dir`` and prints its table.

    python bench/interplane.py                                 # shipped model, every test slice
    python bench/interplane.py --case_stride 4                 # every 4th slice (12 mm apart): quicker
    python bench/interplane.py --out_dir bundle/docs/records   # to update the documented record
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import fire
from records import ROOT, generate_and_evaluate, publish, run_info, test_subset
from tables import interplane_table

from scripts.sampler import NOISE


def main(
    ckpt_path: str = str(ROOT / "bundle/models/model.pt"),
    datalist: str = str(ROOT / "bundle/data/datalist_2d.json"),
    case_stride: int = 1,
    solver: str = "euler",
    num_steps: int = 10,
    out_dir: str = "results/interplane",
    work_dir: str = "results/interplane_runs",
    **overrides,
) -> dict:
    """Runs each noise option on the test split (every ``case_stride``-th slice); prints and saves the record
    (``overrides``: bundle config overrides, e.g. ``--segmenter_path ''``)."""
    start = time.perf_counter()
    out, work = Path(out_dir).resolve(), Path(work_dir).resolve()
    settings = {"ckpt_path": ckpt_path, "solver": solver, "num_steps": num_steps}
    settings.update(test_subset({"datalist": datalist, **overrides}, case_stride, work))
    rows = []
    for noise in NOISE:
        metrics, _ = generate_and_evaluate("flow", work / noise, noise=noise, **settings)
        relative = (metrics.get("interplane_ratio") or math.nan) / (metrics.get("interplane_ratio_real") or math.nan)
        rows.append({"noise": noise, "metrics": metrics, "generated_over_real": round(relative, 3)})
    record = {
        **run_info("interplane"),
        "settings": {**settings, "case_stride": case_stride},
        "model": rows[0]["metrics"].get("model", {}),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    publish(record, out, interplane_table)
    return record


if __name__ == "__main__":
    fire.Fire(main)
