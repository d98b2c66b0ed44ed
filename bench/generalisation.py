"""Does the model follow masks it has never seen? The model against the trivial baselines it must beat.

On two sets of unseen anatomy, each method generates one image per test mask through the bundle's own
``inference.json`` + ``evaluate.json`` (the baselines through ``baselines.json``), and every metric of
``evaluate.json`` is kept with its 95% bootstrap interval:

- ``test subjects``: the data set's test subjects (never seen in training);
- ``larger deformations``: subjects built here with another seed and twice the largest displacement of the
  training subjects (``unseen_displacement_mm``), beyond anything in training.

Methods: the model (``solver``, ``num_steps``), ``nearest_training`` (the training image whose mask matches best:
memory) and ``tissue_means`` (the mask painted with the training tissue means). Writes ``generalisation.json``
(one record), ``generalisation.png`` and ``samples_test_subjects.png`` (the
first test masks, the model's samples and the real slices) into ``out_dir``; the generated sets and the unseen
subjects go to ``work_dir``.

    python bench/generalisation.py                                # shipped model and bundle/data
    python bench/generalisation.py --out_dir bundle/docs/records  # to update the documented record
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import fire
from records import ROOT, generate_and_evaluate, publish, run_info
from tables import generalisation_table

from scripts.visualize import plt

METHODS = ("model", "nearest_training", "tissue_means")
SHOWN = ("mask_dice", "correlation_in_mask", "fd_halves_generated", "conditional_ms_ssim")


def main(
    ckpt_path: str = str(ROOT / "bundle/models/model.pt"),
    segmenter_path: str = str(ROOT / "bundle/models/segmenter.pt"),
    data_dir: str = str(ROOT / "bundle/data"),
    out_dir: str = "results/generalisation",
    work_dir: str = "results/generalisation_runs",
    solver: str = "euler",
    num_steps: int = 10,
    unseen_displacement_mm: float = 12.0,
    unseen_subjects: int = 4,
    unseen_slice_step_mm: int = 3,
    datalist: str | None = None,
    seed: int = 0,
    **overrides,
) -> dict:
    """Runs every method on both sets; prints and saves the record."""
    from scripts.synthetic_subjects import build

    out, work = Path(out_dir).resolve(), Path(work_dir).resolve()
    start = time.perf_counter()
    record = json.loads((Path(data_dir) / "subjects.json").read_text())
    unseen_dir = work / "unseen_data"
    wanted = (1000 + seed, unseen_displacement_mm, unseen_subjects, unseen_slice_step_mm)
    if _built_with(unseen_dir) != wanted:
        build(
            str(unseen_dir),
            subjects=(1, 1, unseen_subjects),
            seed=1000 + seed,
            max_displacement_mm=unseen_displacement_mm,
            slice_step_mm=unseen_slice_step_mm,
        )
    sets = {
        "test subjects": (data_dir, datalist or f"{data_dir}/datalist_2d.json", record["max_displacement_mm"]),
        "larger deformations": (str(unseen_dir), f"{unseen_dir}/datalist_2d.json", unseen_displacement_mm),
    }
    settings = {
        "ckpt_path": ckpt_path,
        "segmenter_path": segmenter_path,
        "solver": solver,
        "num_steps": num_steps,
        "seed": seed,
        **overrides,
    }
    rows = []
    for set_name, (folder, datalist, displacement) in sets.items():
        for method in METHODS:
            name = f"{set_name.replace(' ', '_')}-{method}"
            generator = "flow" if method == "model" else method
            metrics, _ = generate_and_evaluate(
                generator, work / name, dataset_dir=folder, datalist=datalist, **settings
            )
            rows.append({"data": set_name, "max_displacement_mm": displacement, "method": method, "metrics": metrics})
    result = {
        **run_info("generalisation"),
        "settings": {**settings, "training_max_displacement_mm": record["max_displacement_mm"]},
        "model": rows[0]["metrics"].get("model", {}),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    publish(result, out, generalisation_table)
    plot(result, out / "generalisation.png")
    shutil.copyfile(work / "test_subjects-model" / "samples.png", out / "samples_test_subjects.png")
    return result


def _built_with(folder: Path) -> tuple | None:
    """(seed, largest displacement, test subjects, slice step) of a data set built by synthetic_subjects.py; None if
    there is none."""
    path = folder / "subjects.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    tests = sum(s["split"] == "test" for s in record["subjects"])
    return record["seed"], record["max_displacement_mm"], tests, record.get("slice_step_mm")


def plot(result: dict, path: Path) -> None:
    """Bars with 95% intervals: each shown metric, per data set and method."""
    sets = list(dict.fromkeys(r["data"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(4 * len(SHOWN), 3.4))
    width = 0.8 / len(METHODS)
    for ax, key in zip(axes, SHOWN):
        for k, method in enumerate(METHODS):
            rows = [next(r for r in result["rows"] if r["data"] == s and r["method"] == method) for s in sets]
            values = [r["metrics"].get(key) or 0 for r in rows]
            cis = [r["metrics"]["ci95"].get(key, [v, v]) for r, v in zip(rows, values)]
            err = [[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]]
            ax.bar([i + k * width for i in range(len(sets))], values, width, yerr=err, capsize=3, label=method)
        ax.set_xticks([i + width for i in range(len(sets))], sets, fontsize=8)
        ax.set_title(key, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire(main)
