"""The benchmarks' small modes on tiny models: every row measured, the ratios computed, tables and plots written."""

from __future__ import annotations

import json
import math
import sys

from conftest import ROOT, tiny

sys.path.insert(0, str(ROOT / "bench"))


def _overrides(data_dir, small_datalist) -> dict:
    return {**tiny("mask_class_2d"), "dataset_dir": str(data_dir), "datalist": str(small_datalist)}


def test_sampling_benchmark(data_dir, small_datalist, tiny_model, tiny_ddpm, tmp_path):
    from sampling import main

    overrides = {**_overrides(data_dir, small_datalist), "segmenter_path": "", "batch_size": 4}
    main(
        flow_ckpt=str(tiny_model),
        ddpm_ckpt=str(tiny_ddpm),
        out_dir=str(tmp_path),
        nfe=(1, 2),
        ddim_steps=(2,),
        ddpm_steps=3,
        train_iterations=3,
        overrides=overrides,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["solver"], r["nfe"]): r for r in results["rows"]}
    expected = {("flow", "euler", 1), ("flow", "euler", 2), ("flow", "heun", 2), ("flow", "midpoint", 2)}
    assert set(rows) == expected | {("ddpm", "ddim", 2), ("ddpm", "ddpm", 3)}
    for row in rows.values():
        assert row["seconds_per_sample"] > 0 and 0.2 < row["sampler_overhead"] < 20
        assert math.isfinite(row["psnr_paired"]) and math.isfinite(row["mmd"]) and row["mask_dice"] is None
    # one Euler step moves the noise (the reference code's bug would leave PSNR at the noise's level in both rows)
    assert rows[("flow", "euler", 1)]["psnr_paired"] != rows[("flow", "euler", 2)]["psnr_paired"]
    training = results["training"]
    assert (
        training["trainer_overhead"]
        == training["trainer_seconds_per_iteration"] / training["bare_seconds_per_iteration"]
    )
    assert 0.2 < training["trainer_overhead"] < 20
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| flow |") == 4 and "| ddpm | ddpm | 3 | 3 |" in table
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("quality_vs_nfe.png", "quality_vs_seconds.png"))


def test_downstream_benchmark(data_dir, small_datalist, tiny_model, tmp_path):
    from downstream import main

    main(
        ckpt=str(tiny_model),
        out_dir=str(tmp_path),
        num_steps=1,
        seg_iterations=2,
        cls_iterations=2,
        seeds=(0, 1),
        overrides=_overrides(data_dir, small_datalist),
    )
    summary = json.loads((tmp_path / "downstream.json").read_text())
    assert summary["train_cases"] == 8 and summary["test_cases"] == 4 and summary["seeds"] == [0, 1]
    for task in ("segmenter", "classifier"):
        assert set(summary["results"][task]) == {"real", "synthetic", "real + synthetic"}
        assert all(0 <= r["mean"] <= 1 and r["std"] >= 0 for r in summary["results"][task].values())
    assert (tmp_path / "downstream.md").read_text().count("\n| ") == 3  # a row per training set


def test_generalisation_benchmark(data_dir, small_datalist, tiny_model, segmenter, tmp_path):
    from generalisation import main

    main(
        ckpt_path=str(tiny_model),
        segmenter_path=segmenter,
        data_dir=str(data_dir),
        datalist=str(small_datalist),
        out_dir=str(tmp_path),
        work_dir=str(tmp_path / "runs"),
        num_steps=2,
        unseen_subjects=1,
        unseen_slice_step_mm=12,
        **tiny("mask_class_2d"),
    )
    record = json.loads((tmp_path / "generalisation.json").read_text())
    rows = {(r["data"], r["method"]): r["metrics"] for r in record["rows"]}
    methods = ("model", "nearest_training", "tissue_means")
    assert set(rows) == {(d, m) for d in ("test subjects", "larger deformations") for m in methods}
    assert rows[("test subjects", "model")]["nfe"] == 2 and rows[("test subjects", "tissue_means")]["nfe"] == 0
    assert rows[("test subjects", "model")]["num_real"] == 4  # the given datalist's test split
    for data in ("test subjects", "larger deformations"):  # one real set, one segmenter: one ceiling per data set
        assert len({rows[(data, m)]["mask_dice_real"] for m in methods}) == 1
    assert record["model"]["iterations"] > 0  # the card's provenance travels with the record
    table = (tmp_path / "generalisation.md").read_text()
    assert table.count("| nearest_training |") == 2 and "Model: " in table
    assert (tmp_path / "generalisation.png").stat().st_size > 1000
