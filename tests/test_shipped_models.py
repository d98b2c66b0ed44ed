"""The model files the quick start runs (bundle/models) load on CPU, sample, and score near the documented figures
(bundle/docs/records/generalisation.json) on test subjects they never saw; the baselines were trained like the
models they are compared with; the 3D models follow unseen masks in consistent volumes, in the bundle and through
the deploy app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tables import INTERPLANE_GOAL, RECORDS, _flow_euler

from conftest import BUNDLE, run_bundle
from scripts.metrics import interplane_ratio

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


def cards(*names: str) -> list[dict]:
    return [torch.load(BUNDLE / "models" / name, weights_only=True)["card"] for name in names]


@pytest.mark.parametrize("flow_file, ddpm_file", [("model.pt", "model_ddpm.pt"), ("model_3d.pt", "model_ddpm_3d.pt")])
def test_the_ddpm_baseline_was_trained_like_the_flow_model(flow_file, ddpm_file):
    """The same network, image size, training data, iterations and training settings. The data: one datalist (by
    its SHA-256) and case count throughout, and the files of one model's builds among the other's (a rebuild of the
    generated data on another CPU type came out different in bytes, and a card records each build it trained on)."""
    flow, ddpm = cards(flow_file, ddpm_file)
    assert (flow["method"], ddpm["method"]) == ("flow", "ddpm")
    assert ddpm["network"] == flow["network"] and ddpm["image_size"] == flow["image_size"]
    a, b = ddpm["provenance"], flow["provenance"]
    trained_on = [(p["data"], *p.get("data_history", [])) for p in (a, b)]  # each card's builds of the data
    assert len({(d["datalist_sha256"], d["num_cases"]) for data in trained_on for d in data}) == 1
    builds_a, builds_b = ({d["files_sha256"] for d in data} for data in trained_on)
    assert builds_a <= builds_b or builds_b <= builds_a
    assert a["iterations"] == b["iterations"]
    same = ("batch_size", "seed", "lr", "lr_schedule", "ema_decay", "condition_dropout", "unet", "variant")
    assert {k: a["settings"][k] for k in same} == {k: b["settings"][k] for k in same}


def test_the_2d_ddpm_baseline_has_the_chosen_schedule_and_train_ddpm_defaults_to_it():
    """The shipped baseline's noise schedule and prediction type are the selection's choice (ranked on the
    validation subjects), and ``train_ddpm.json``'s defaults, so its commands remake it."""
    (ddpm,) = cards("model_ddpm.pt")
    chosen = json.loads((RECORDS / "ddpm_selection.json").read_text())["chosen"]
    config = json.loads((BUNDLE / "configs" / "train_ddpm.json").read_text())
    choice = (chosen["noise_schedule"], chosen["prediction_type"])
    assert (ddpm["schedule"]["schedule"], ddpm["schedule"]["prediction_type"]) == choice
    assert (config["noise_schedule"], config["prediction_type"]) == choice


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


@pytest.fixture(scope="module")
def shipped_3d_metrics(unseen_dir, tmp_path_factory) -> dict:
    """evaluate.json with the shipped 3D flow model and 3D segmenter (Euler, 10 NFE) on the unseen test volumes."""
    out = tmp_path_factory.mktemp("shipped_3d") / "eval"
    run_bundle(
        ["inference.json", "variants/mask_3d.json", "evaluate.json"],
        dataset_dir=str(unseen_dir),
        datalist=str(unseen_dir / "datalist_3d.json"),
        output_dir=str(out),
        ckpt_path=str(BUNDLE / "models" / "model_3d.pt"),
        solver="euler",
        num_steps=10,
        bootstrap_draws=50,
    )
    return json.loads((out / "metrics.json").read_text())


def test_the_shipped_3d_model_follows_unseen_masks_in_consistent_volumes(shipped_3d_metrics):
    """On volumes it never saw: the 3D segmenter finds the mask in the generated volumes nearly as well as in the
    real ones, and their feet-head second differences stay within ``INTERPLANE_GOAL`` (1.3x) of the real volumes'."""
    m = shipped_3d_metrics
    assert m["num_generated"] == 2 and m["nfe"] == 10
    record = json.loads((RECORDS / "volumetric.json").read_text())
    recorded = _flow_euler(record["rows"], 10)
    assert abs(m["mask_dice"] - recorded["mask_dice"]) < TOLERANCE, (m["mask_dice"], recorded["mask_dice"])
    assert m["model"]["iterations"] == record["models"]["flow"]["iterations"]  # the recorded model is the shipped one
    assert m["mask_dice"] > 0.85 * m["mask_dice_real"], (m["mask_dice"], m["mask_dice_real"])
    real = m["interplane_ratio_real"]
    assert m["interplane_ratio"] < INTERPLANE_GOAL * real, (m["interplane_ratio"], real)


def test_the_deploy_app_synthesises_a_whole_series_with_the_shipped_3d_model(unseen_dir, tmp_path):
    """The README's one line (configs/deploy_3d.json as configs/deploy.json) switches the app to the shipped 3D
    model. On a whole-head MR series of an unseen subject (55 axial planes, 3 mm) with its tissue SEG, the app
    synthesises the stack at once: one plane on each source plane, Synthetic Data YES, dciodvfy clean, and the
    series' feet-head second differences within 1.3x of the source series' (its reformats are not streaked)."""
    from testbed.app import dciodvfy_errors, output_series, run_app
    from testbed.studies import load_volumes, study_header, write_mr_series, write_seg

    folder = tmp_path / "model"
    shutil.copytree(BUNDLE / "configs", folder / "configs")
    shutil.copy(folder / "configs" / "deploy_3d.json", folder / "configs" / "deploy.json")
    for name in ("models", "scripts"):
        (folder / name).symlink_to(BUNDLE / name)
    image, labels = load_volumes(unseen_dir)
    source = write_mr_series(tmp_path / "in" / "t1", image, study_header(invalid=False), num_slices=55, shape=(68, 56))
    write_seg(tmp_path / "in" / "seg.dcm", source, labels)
    done = run_app(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(folder)])
    assert done.returncode == 0, done.stderr[-3000:]
    (series,) = output_series(tmp_path / "out").values()
    assert len(series) == len(source)
    by_uid = {ds.SOPInstanceUID: ds for ds in source}
    for ds in series:
        src = by_uid[ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SyntheticData == "YES" and ds.ImageOrientationPatient == src.ImageOrientationPatient
        assert np.allclose(positions([ds]), positions([src]), atol=1e-3)
        assert dciodvfy_errors(Path(ds.filename)) == [], ds.filename
    ratio, real = (interplane_ratio(stack(instances), axis=0) for instances in (series, source))
    assert ratio < INTERPLANE_GOAL * real, (ratio, real)


def positions(instances: list) -> np.ndarray:
    """Image Position (Patient) of each instance: (N, 3)."""
    return np.array([[float(v) for v in ds.ImagePositionPatient] for ds in instances])


def stack(instances: list) -> torch.Tensor:
    """An axial series' pixels in feet-head order: (planes, rows, columns)."""
    order = np.argsort(positions(instances)[:, 2])
    return torch.from_numpy(np.stack([instances[k].pixel_array for k in order]).astype(np.float32))
