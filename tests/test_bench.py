"""The benchmarks' small modes on tiny models: every row measured, the ratios computed, tables and plots written."""

from __future__ import annotations

import json
import math

import torch

from conftest import published_table, tiny
from scripts.provenance import file_sha256


def _overrides(data_dir, small_datalist) -> dict:
    return {**tiny("mask_class_2d"), "dataset_dir": str(data_dir), "datalist": str(small_datalist)}


def test_sampling_benchmark(data_dir, small_datalist, tiny_model, tiny_ddpm, tmp_path):
    from sampling import main

    overrides = {**_overrides(data_dir, small_datalist), "segmenter_path": "", "batch_size": 4}
    args = {
        "flow_ckpt": str(tiny_model),
        "ddpm_ckpt": str(tiny_ddpm),
        "out_dir": str(tmp_path),
        "work_dir": str(tmp_path / "runs"),
        "nfe": (1, 2),
        "ddim_steps": (2,),
        "ddpm_steps": 3,
        "case_stride": 2,
        "train_iterations": 3,
        "overrides": overrides,
    }
    main(**args)
    record = json.loads((tmp_path / "sampling.json").read_text())
    test_split = json.loads(small_datalist.read_text())["test"]
    assert json.loads((tmp_path / "runs/test_subset.json").read_text())["test"] == test_split[::2]
    rows = {(r["method"], r["solver"], r["nfe"]): r for r in record["rows"]}
    assert set(rows) == {
        ("flow", "euler", 1),
        ("flow", "euler", 2),
        ("flow", "midpoint", 2),
        ("ddpm", "ddim", 2),
        ("ddpm", "ddpm", 3),
    }
    for row in rows.values():
        assert row["seconds_per_sample"] > 0
        assert math.isfinite(row["psnr_paired"]) and math.isfinite(row["mmd"]) and row["mask_dice"] is None
        lo, hi = row["ci95"]["psnr_paired"]
        assert lo <= row["psnr_paired"] <= hi
    # one Euler step moves the noise (the reference code's bug would leave PSNR at the noise's level in both rows)
    assert rows[("flow", "euler", 1)]["psnr_paired"] != rows[("flow", "euler", 2)]["psnr_paired"]
    # DDPM's ancestral sampler calls the network once per step; the bare forward is timed on the same batch
    assert rows[("ddpm", "ddpm", 3)]["nfe"] == 3 and rows[("ddpm", "ddpm", 3)]["sampler_overhead"] > 0
    assert record["models"]["flow"]["iterations"] > 0  # the models' provenance travels with the record
    table = published_table(tmp_path, "sampling")
    assert table.count("\n| flow |") == 3 and "| ddpm | ddpm | 3 |" in table
    assert "Flow at 10 NFE against DDPM ddpm 1000: not in this record." in table  # the claim's goals, stated
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("quality_vs_nfe.png", "quality_vs_seconds.png"))

    # a rerun resumes: each setting's saved result is read back, not measured again (the files stay as they were) ...
    saved = sorted((tmp_path / "runs").glob("*/result.json"))
    assert len(saved) == len(rows)
    stamps = [f.stat().st_mtime_ns for f in saved]
    main(**args)
    assert json.loads((tmp_path / "sampling.json").read_text())["rows"] == record["rows"]
    assert [f.stat().st_mtime_ns for f in saved] == stamps
    # ... unless what it depends on changed: another flow checkpoint measures the flow rows again
    other = tmp_path / "other.pt"
    other.write_bytes(tiny_model.read_bytes() + b"\0")
    main(**{**args, "flow_ckpt": str(other), "ddim_steps": (), "ddpm_steps": 0, "nfe": (1,)})
    remeasured = json.loads((tmp_path / "runs/flow-euler-1/result.json").read_text())
    assert remeasured["key"]["checkpoint_sha256"] == file_sha256(str(other))


def test_downstream_benchmark(data_dir, small_datalist, tiny_model, tmp_path):
    from downstream import main

    main(
        ckpt_path=str(tiny_model),
        out_dir=str(tmp_path),
        work_dir=str(tmp_path / "runs"),
        num_steps=1,
        seg_iterations=2,
        cls_iterations=2,
        seeds=(0, 1),
        **_overrides(data_dir, small_datalist),
    )
    record = json.loads((tmp_path / "downstream.json").read_text())
    assert record["seeds"] == [0, 1] and record["test_cases"] == 4
    assert [(r["trained_on"], r["cases"]) for r in record["rows"]] == [
        ("real", 8),
        ("flow", 8),
        ("real + flow", 16),
        ("tissue means", 8),
    ]
    real = json.loads(small_datalist.read_text())["training"]
    for method in ("flow", "tissue_means"):  # one synthetic image per real training mask, with its class
        made = json.loads((tmp_path / "runs" / method / "datalist.json").read_text())["training"]
        assert [(c["class"], c["subject"]) for c in made] == [(c["class"], c["subject"]) for c in real]
    for row in record["rows"]:
        m = row["metrics"]
        for key in ("segmenter_dice", "classifier_accuracy"):
            lo, hi = m["ci95"][key]
            assert 0 <= lo <= m[key] <= hi <= 1 and m["seed_std"][key] >= 0
    assert published_table(tmp_path, "downstream").count("\n| ") == 4  # a row per training set
    assert (tmp_path / "downstream.png").stat().st_size > 0


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
    table = published_table(tmp_path, "generalisation")
    assert table.count("| nearest_training |") == 2 and "Model: " in table
    assert (tmp_path / "generalisation.png").stat().st_size > 1000
    samples = tmp_path / "samples_test_subjects.png"  # the model's own grid on the test subjects
    assert samples.read_bytes() == (tmp_path / "runs" / "test_subjects-model" / "samples.png").read_bytes()


def test_guidance_benchmark(data_dir, small_datalist, tiny_model, classifier, tmp_path):
    from guidance import main

    record = main(
        ckpt_path=str(tiny_model),
        scales=(1.0, 2.0),
        num_steps=2,
        case_stride=2,
        out_dir=str(tmp_path),
        work_dir=str(tmp_path / "runs"),
        **{**_overrides(data_dir, small_datalist), "classifier_path": classifier, "segmenter_path": ""},
    )
    rows = {r["guidance_scale"]: r["metrics"] for r in record["rows"]}
    assert rows[1.0]["nfe"] == 2 and rows[2.0]["nfe"] == 4  # guidance: two network calls per step
    assert rows[1.0]["guidance_scale"] == 1.0 and rows[2.0]["guidance_scale"] == 2.0
    assert rows[1.0]["num_generated"] == len(json.loads(small_datalist.read_text())["test"][::2])  # the stride
    assert rows[1.0]["psnr_paired"] != rows[2.0]["psnr_paired"]  # the scale reaches the sampler
    for m in rows.values():  # one classifier, one real set: one ceiling
        assert 0 <= m["class_accuracy"] <= 1 and m["class_accuracy_real"] == rows[1.0]["class_accuracy_real"]
    assert published_table(tmp_path, "guidance").count("\n| ") == 2  # a row per scale, under the header
    assert (tmp_path / "guidance.png").stat().st_size > 1000


def test_ddpm_selection_benchmark(data_dir, small_datalist, segmenter, tmp_path):
    from ddpm_selection import main

    record = main(
        data_dir=str(data_dir),
        datalist=str(small_datalist),
        epochs=1,
        case_stride=1,
        num_steps=2,
        segmenter_path=segmenter,
        out_dir=str(tmp_path),
        work_dir=str(tmp_path / "runs"),
        noise_schedules=("linear_beta", "cosine"),
        prediction_types=("v_prediction",),
        **tiny("mask_class_2d"),
    )
    rows = {(r["noise_schedule"], r["prediction_type"]): r["metrics"] for r in record["rows"]}
    assert set(rows) == {("linear_beta", "v_prediction"), ("cosine", "v_prediction")}
    for m in rows.values():  # each candidate sampled the validation split with its own schedule
        assert m["num_generated"] == 2 and m["nfe"] == 2 and m["fd_segmenter_features"] is not None
    best = min(rows, key=lambda k: rows[k]["fd_segmenter_features"])
    assert (record["chosen"]["noise_schedule"], record["chosen"]["prediction_type"]) == best
    cards = {k: torch.load(tmp_path / "runs" / f"{k[0]}-{k[1]}" / "model.pt", weights_only=True)["card"] for k in rows}
    assert {c["schedule"]["schedule"] for c in cards.values()} == {"linear_beta", "cosine"}
    assert "Chosen: " in published_table(tmp_path, "ddpm_selection")


def test_scale_cpu_measures_memory_and_time_beside_the_estimate(tmp_path):
    from scale import cpu
    from tables import scale_cpu_table

    record = cpu(sides="16,48", estimate_sides="64", repeats=1, out=str(tmp_path))
    small, large, estimated = record["rows"]
    assert json.loads((tmp_path / "scale_cpu.json").read_text())["rows"] == record["rows"]
    # 27x the voxels: more activation memory, training and sampling alike (times are measured, not compared: a loaded
    # machine can reorder them)
    for key in ("train_gib", "sample_gib"):
        assert large[key] > small[key] > 0, key
    assert min(row[k] for row in (small, large) for k in ("train_seconds", "sample_seconds")) > 0
    assert large["train_gib"] > large["sample_gib"]  # gradients, optimizer moments, saved activations
    assert estimated["side"] == 64 and "train_gib" not in estimated
    assert estimated["estimated_gib"] > large["estimated_gib"] > small["estimated_gib"]
    assert large["estimate_over_measured"] == round(large["estimated_gib"] / large["train_gib"], 2)
    assert "| 64^3 | - | - | - | - |" in scale_cpu_table(record)


def test_scale_throughput_trains_and_generates_the_variants_test_split(data_dir, small_datalist, tmp_path):
    from scale import throughput

    record = throughput(
        variants="mask_class_2d", iterations=2, out=str(tmp_path), **_overrides(data_dir, small_datalist)
    )
    (row,) = record["rows"]
    assert json.loads((tmp_path / "scale_throughput.json").read_text()) == record
    assert row["variant"] == "mask_class_2d" and row["image_size"] == [16, 16] and row["nfe"] == 10
    assert row["generated"] == len(json.loads(small_datalist.read_text())["test"])
    assert row["train_images_per_second"] > 0 and row["generate_images_per_second"] > 0
    table = published_table(tmp_path, "scale_throughput")
    assert table.count("\n| mask_class_2d | 16x16 |") == 1 and "python bench/scale.py" in table


def test_a_kept_result_is_reused_until_its_key_or_the_bundle_code_changes(tmp_path, monkeypatch):
    from records import resumable

    import scripts.provenance

    calls = []

    def measure(x):
        calls.append(x)
        return {"value": x}

    assert resumable(tmp_path, {"a": 1}, measure, 1) == {"value": 1}
    assert resumable(tmp_path, {"a": 1}, measure, 2) == {"value": 1} and calls == [1]  # read back
    assert resumable(tmp_path, {"a": 2}, measure, 3) == {"value": 3}
    version = scripts.provenance.code_version()
    monkeypatch.setattr(scripts.provenance, "code_version", lambda: {**version, "scripts_sha256": "other code"})
    assert resumable(tmp_path, {"a": 2}, measure, 4) == {"value": 4} and calls == [1, 3, 4]
