"""Classifier-free guidance: what the guidance scale does to the class-conditioned model's images.

For each guidance scale the model generates the test split through the bundle's ``inference.json`` +
``evaluate.json``, and the record keeps every metric with its 95% interval: above all the feature-space Fréchet
distance, and how well the class (the axial level) is reproduced: ``class_accuracy``, the accuracy of a classifier
trained on the training subjects (``train_classifier.json``) on the generated images, beside its accuracy on the
real ones. Guidance costs two network calls per step, which the NFE column shows.

Writes ``guidance.json`` (one record) and ``guidance.png`` into ``out_dir``.

    python bench/guidance.py                                 # shipped model, default data
    python bench/guidance.py --case_stride 4 --out_dir bundle/docs/records   # the documented run (every 4th slice)
"""

from __future__ import annotations

import time
from pathlib import Path

import fire
from records import ROOT, generate_and_evaluate, publish, run_info, test_subset
from tables import guidance_table

from scripts.visualize import plt

SHOWN = ("fd_segmenter_features", "class_accuracy", "mask_dice", "conditional_ms_ssim")


def main(
    ckpt_path: str = str(ROOT / "bundle/models/model.pt"),
    scales: tuple = (1.0, 1.5, 2.0, 3.0),
    solver: str = "euler",
    num_steps: int = 10,
    case_stride: int = 1,
    out_dir: str = "results/guidance",
    work_dir: str = "results/guidance_runs",
    **overrides,
) -> dict:
    """Runs every guidance scale on every ``case_stride``-th test case; prints and saves the record
    (``overrides``: bundle config overrides)."""
    start = time.perf_counter()
    out, work = Path(out_dir).resolve(), Path(work_dir).resolve()
    settings = {"ckpt_path": ckpt_path, "solver": solver, "num_steps": num_steps}
    settings.update(test_subset(overrides, case_stride, work))
    record_settings = {**settings, "case_stride": case_stride}
    rows = []
    for scale in scales:
        metrics, _ = generate_and_evaluate("flow", work / f"scale_{scale:g}", guidance_scale=float(scale), **settings)
        rows.append({"guidance_scale": float(scale), "metrics": metrics})
    record = {
        **run_info("guidance"),
        "settings": record_settings,
        "model": rows[0]["metrics"].get("model", {}),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    publish(record, out, guidance_table)
    plot(rows, out / "guidance.png")
    return record


def plot(rows: list[dict], path: Path) -> None:
    """Each shown metric against the guidance scale, with its 95% interval."""
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(4 * len(SHOWN), 3.2))
    for ax, key in zip(axes, SHOWN):
        points = [(r["guidance_scale"], r["metrics"][key], r["metrics"]["ci95"].get(key)) for r in rows]
        points = [(x, y, ci or [y, y]) for x, y, ci in points if y is not None]
        if points:
            x, y, ci = zip(*points)
            ax.errorbar(
                x,
                y,
                yerr=[[v - lo for v, (lo, _) in zip(y, ci)], [hi - v for v, (_, hi) in zip(y, ci)]],
                marker="o",
                capsize=3,
            )
        ax.set_xlabel("guidance scale")
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire(main)
