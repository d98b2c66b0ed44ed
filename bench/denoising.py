"""Flow denoising against non-local means, on the test subjects and on the same slices in other units.

The bundle's own denoising benchmark (``denoise.json``'s ``benchmark``: ``scripts.denoising.DenoisingBenchmark``,
which runs the denoising policy the deploy app runs, each subject's slices as one series) on three sets of the
same anatomy, each written as files and read back by the bundle like any data set:

- ``test subjects``: every ``slice_stride``-th slice of the data set's test split, in the data's units;
- ``other units, linear``: those slices times one factor that brings the set's maximum to ``max_intensity``,
  rounded to integers (a scanner that stores another scale);
- ``other units, gamma and bias``: those slices to the power ``gamma``, times a bias ramp from ``1 - bias`` to
  ``1 + bias`` across the image's first axis (left to right), times one factor that brings the set's maximum to
  ``max_intensity``, rounded to integers (another scanner's contrast and coil profile as well).

Writes ``denoising.json`` (one record) into ``out_dir`` and prints its table; the sets and the
benchmark's own outputs (``denoising.json``, ``denoising.png`` per set) go to ``work_dir``.

    python bench/denoising.py                                # shipped model and bundle/data
    python bench/denoising.py --out_dir bundle/docs/records  # to update the documented record
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
from records import ROOT, publish, run_info, workflow
from tables import denoising_table

from scripts.checkpoint import read_checkpoint

SETS = ("test subjects", "other units, linear", "other units, gamma and bias")


def intensity_maps(images: list[np.ndarray], max_intensity: float, gamma: float, bias: float) -> dict:
    """The other-units versions of ``images`` (2D arrays in the data's units): set name -> rounded int16 arrays."""
    ramps = [np.linspace(1 - bias, 1 + bias, a.shape[0])[:, None] for a in images]
    curved = [ramp * np.clip(a, 0, None) ** gamma for a, ramp in zip(images, ramps)]
    out = {}
    for name, mapped in ((SETS[1], images), (SETS[2], curved)):
        factor = max_intensity / max(float(a.max()) for a in mapped)
        out[name] = [np.rint(a * factor).astype(np.int16) for a in mapped]
    return out


def write_sets(data_dir: Path, work: Path, slice_stride: int, max_intensity: float, gamma: float, bias: float):
    """Writes the two other-units sets beside a datalist of the chosen test slices; set name -> datalist path."""
    test = json.loads((data_dir / "datalist_2d.json").read_text())["test"][::slice_stride]
    files = [nib.load(data_dir / case["image"]) for case in test]
    mapped = intensity_maps([np.asarray(f.dataobj, dtype=np.float64) for f in files], max_intensity, gamma, bias)
    datalists = {}
    for k, name in enumerate(SETS):
        folder = work / f"set_{k}"
        entries = []
        for case, source, array in zip(test, files, mapped.get(name, [None] * len(test))):
            if array is None:
                path = data_dir / case["image"]  # the data set's own file
            else:
                path = folder / "images" / Path(case["image"]).name
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(array, source.affine), path)
            entries.append({"image": str(path), "subject": case["subject"]})
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "datalist.json").write_text(json.dumps({"test": entries}, indent=1))
        datalists[name] = folder / "datalist.json"
    return datalists


def main(
    ckpt_path: str = str(ROOT / "bundle/models/model.pt"),
    data_dir: str = str(ROOT / "bundle/data"),
    out_dir: str = "results/denoising",
    work_dir: str = "results/denoising_runs",
    slice_stride: int = 4,
    levels: tuple[float, ...] = (0.05, 0.1),
    max_intensity: float = 130.0,
    gamma: float = 1.4,
    bias: float = 0.2,
    solver: str = "euler",
    num_steps: int = 10,
    seed: int = 0,
    **overrides,
) -> dict:
    """Builds the sets, runs the bundle's denoising benchmark on each; prints and saves the record."""
    out, work = Path(out_dir).resolve(), Path(work_dir).resolve()
    start = time.perf_counter()
    datalists = write_sets(Path(data_dir), work, slice_stride, max_intensity, gamma, bias)
    settings = {"ckpt_path": ckpt_path, "solver": solver, "num_steps": num_steps, "seed": seed, **overrides}
    rows, sets = [], {}
    for k, (name, datalist) in enumerate(datalists.items()):
        run_dir = work / f"benchmark_{k}"
        wf = workflow(
            ["inference.json", "denoise.json"],
            run_id="benchmark",
            datalist=str(datalist),
            dataset_dir=str(datalist.parent),
            output_dir=str(run_dir),
            noise_levels=list(levels),
            **settings,
        )
        wf.run()
        result = json.loads((run_dir / "denoising.json").read_text())
        sets[name] = {key: result[key] for key in ("num_cases", "num_series", "intensities")}
        rows += [{"data": name, **row} for row in result["rows"]]
    card = read_checkpoint(ckpt_path)["card"]
    provenance = card.get("provenance") or {}
    record = {
        **run_info("denoising"),
        "settings": {
            **settings,
            "slice_stride": slice_stride,
            "levels": list(levels),
            "other_units": {"max_intensity": max_intensity, "gamma": gamma, "bias": bias},
            "card_intensity_range": card["intensity_range"],
        },
        "model": {key: provenance.get(key) for key in ("iterations", "epochs", "training_seconds")},
        "sets": sets,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    publish(record, out, denoising_table)
    return record


if __name__ == "__main__":
    fire.Fire(main)
