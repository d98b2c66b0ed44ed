"""The model files the quick start runs (bundle/models) load on CPU, sample, and score near the documented figures
(bundle/docs/records/generalisation.json) on test subjects they never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tables import RECORDS

from conftest import BUNDLE, run_bundle

DOCUMENTED = next(
    row["metrics"]
    for row in json.loads((RECORDS / "generalisation.json").read_text())["rows"]
    if row["data"] == "test subjects" and row["method"] == "model"
)
TOLERANCE = 0.1  # a dozen slices of two subjects against the record's four subjects


@pytest.fixture(scope="module")
def unseen_dir(tmp_path_factory):
    """Subjects the shipped models never saw: the data builder with a seed the shipped data (seed 0) were not built
    with, so every subject has its own deformation, affine, bias field and contrast (the session's ``data_dir``,
    seed 0, repeats the first subjects of the shipped training split)."""
    from scripts.synthetic_subjects import build

    return Path(build(str(tmp_path_factory.mktemp("unseen") / "subjects"), subjects=(1, 1, 2), seed=1, slice_step_mm=6))


@pytest.fixture(scope="module")
def shipped_metrics(unseen_dir, tmp_path_factory) -> dict:
    """evaluate.json with the shipped flow model, segmenter and classifier, and the documented sampler settings, on
    every fourth test slice of the unseen subjects."""
    full = json.loads((unseen_dir / "datalist_2d.json").read_text())
    folder = tmp_path_factory.mktemp("shipped")
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"test": full["test"][::4]}))
    run_bundle(
        ["inference.json", "evaluate.json"],
        dataset_dir=str(unseen_dir),
        datalist=str(datalist),
        output_dir=str(folder / "eval"),
        solver=DOCUMENTED["solver"],
        num_steps=DOCUMENTED["num_steps"],
        diversity_cases=4,
        bootstrap_draws=50,
    )
    return json.loads((folder / "eval" / "metrics.json").read_text())


def test_the_shipped_model_follows_unseen_masks_as_documented(shipped_metrics):
    m = shipped_metrics
    assert m["num_generated"] >= 10 and m["nfe"] == DOCUMENTED["nfe"]
    for key in ("mask_dice", "mask_dice_real", "correlation_in_mask"):
        assert abs(m[key] - DOCUMENTED[key]) < TOLERANCE, (key, m[key], DOCUMENTED[key])
    assert m["model"]["iterations"] == DOCUMENTED["model"]["iterations"]  # the documented model is the shipped one


def test_the_shipped_classifier_reads_the_axial_level(shipped_metrics):
    assert shipped_metrics["class_accuracy_real"] > 0.8  # three levels: chance is a third
    assert shipped_metrics["class_accuracy"] is not None


def test_the_shipped_ddpm_baseline_loads_and_samples(data_dir, tmp_path):
    full = json.loads((data_dir / "datalist_2d.json").read_text())
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": full["test"][:2]}))
    run_bundle(
        ["inference.json", "inference_ddpm.json"],
        dataset_dir=str(data_dir),
        datalist=str(datalist),
        output_dir=str(tmp_path / "ddpm"),
        num_steps=5,
    )
    info = json.loads((tmp_path / "ddpm" / "info.json").read_text())
    assert info["num_cases"] == 2 and info["nfe"] == 5
    card = torch.load(BUNDLE / "models" / "model_ddpm.pt", weights_only=True)["card"]
    assert card["method"] == "ddpm" and card["schedule"]["num_train_timesteps"] == 1000


def test_the_ddpm_baseline_was_trained_like_the_flow_model_with_the_chosen_schedule():
    ddpm, flow = (
        torch.load(BUNDLE / "models" / name, weights_only=True)["card"] for name in ("model_ddpm.pt", "model.pt")
    )
    assert ddpm["network"] == flow["network"] and ddpm["image_size"] == flow["image_size"]
    a, b = ddpm["provenance"], flow["provenance"]
    assert a["data"] == b["data"] and a["iterations"] == b["iterations"]  # the same training data, file by file
    same = ("batch_size", "seed", "lr", "lr_schedule", "ema_decay", "condition_dropout", "unet", "variant")
    assert {k: a["settings"][k] for k in same} == {k: b["settings"][k] for k in same}
    chosen = json.loads((RECORDS / "ddpm_selection.json").read_text())["chosen"]
    assert ddpm["schedule"]["schedule"] == chosen["noise_schedule"]
    assert ddpm["schedule"]["prediction_type"] == chosen["prediction_type"]


def test_the_shipped_3d_segmenter_segments_unseen_volumes(unseen_dir):
    """The 3D evaluation's segmenter, at the 3D variants' size, on the unseen subjects' volumes."""
    from scripts import downstream
    from scripts.checkpoint import read_checkpoint
    from scripts.data import input_transforms, load_cases

    size = json.loads((BUNDLE / "configs" / "variants" / "mask_3d.json").read_text())["image_size"]
    path = str(BUNDLE / "models" / "segmenter_3d.pt")
    card = read_checkpoint(path)["card"]
    network = downstream.load(path, "segmenter", size, 4)
    cases = load_cases(str(unseen_dir / "datalist_3d.json"), "test", str(unseen_dir), True, 0)
    transforms = input_transforms(size, 4, card["intensity_range"])
    assert len(cases) == 2 and downstream.score("segmenter", network, cases, transforms, 4) > 0.7
    assert card["provenance"]["data"]["num_cases"] == 24  # trained on the 24 training volumes only
