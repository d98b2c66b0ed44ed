"""Evaluation, the DDPM baseline, denoising and downstream networks, end to end on tiny models."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import USER_ERRORS, error_text, run_bundle, sample, tiny, train
from scripts import downstream
from scripts.data import input_transforms, load_cases, percentile_range

METRIC_KEYS = {"mmd", "hist_wasserstein", "ms_ssim_diversity", "ssim_paired", "psnr_paired", "mask_dice"}
METRIC_KEYS |= {"nfe", "seconds_per_sample"}


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, small_datalist):
    """A tiny tissue segmenter trained on the small real training split, saved as a model file."""
    cases = load_cases(str(small_datalist), "training", use_mask=True)
    rng = percentile_range(cases)
    net = downstream.train("segmenter", cases, [16, 16], 4, rng, num_labels=4, iterations=6, batch_size=4)
    path = str(tmp_path_factory.mktemp("seg") / "segmenter.pt")
    downstream.save(path, "segmenter", net, [16, 16], 4, rng)
    return path


def evaluate(embedded, datalist, ckpt, out, configs=(), **extra):
    extra.setdefault("segmenter_path", "")  # the shipped segmenter is for 64 x 64 models
    return sample("mask_class_2d", embedded, datalist, ckpt, out, configs=(*configs, "evaluate.json"), **extra)


def test_evaluate_writes_every_metric(embedded, small_datalist, tiny_model, segmenter, tmp_path):
    out = evaluate(embedded, str(small_datalist), tiny_model, tmp_path / "eval", segmenter_path=segmenter)
    values = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(values) and "fid" in values
    assert all(np.isfinite(values[k]) for k in METRIC_KEYS)
    assert 0 <= values["mask_dice"] <= 1 and -1 <= values["ssim_paired"] <= 1 and values["nfe"] == 2
    assert values["num_generated"] == values["num_real"] == 3
    assert values["fid"] is None and "Inception" in values["skipped"]["fid"]
    assert (out / "intensity_kde.png").stat().st_size > 1000


def test_evaluate_skips_what_it_cannot_compute(embedded, small_datalist, tiny_model, tmp_path):
    out = evaluate(embedded, str(small_datalist), tiny_model, tmp_path / "e", segmenter_path=str(tmp_path / "none.pt"))
    values = json.loads((out / "metrics.json").read_text())
    assert values["mask_dice"] is None and "train_segmenter.json" in values["skipped"]["mask_dice"]


def test_unconditional_evaluation_has_no_paired_metrics(embedded, small_datalist, tmp_path):
    train("uncond_2d", embedded, str(small_datalist), tmp_path / "train", epochs=2)
    run_bundle(
        ["inference.json", "variants/uncond_2d.json", "evaluate.json"],
        **tiny("uncond_2d"),
        dataset_dir=str(embedded),
        datalist=str(small_datalist),
        ckpt_path=str(tmp_path / "train/model.pt"),
        output_dir=str(tmp_path / "eval"),
        num_steps=2,
    )
    values = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert values["num_generated"] == values["num_real"] == 3  # num_samples follows the test split
    assert values["ssim_paired"] is values["psnr_paired"] is values["mask_dice"] is None
    assert np.isfinite(values["mmd"]) and "paired" in values["skipped"]


def test_fid_with_a_local_feature_network(embedded, small_datalist, tiny_model, tmp_path):
    pooled = (torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # (N, 16)
    features = torch.jit.script(torch.nn.Sequential(*pooled))
    features.save(str(tmp_path / "features.pt"))
    out = evaluate(embedded, str(small_datalist), tiny_model, tmp_path / "e", fid_model=str(tmp_path / "features.pt"))
    values = json.loads((out / "metrics.json").read_text())
    assert values["fid"] is not None and values["fid"] >= 0 and "fid" not in values["skipped"]
    with pytest.raises(USER_ERRORS) as excinfo:
        evaluate(embedded, str(small_datalist), tiny_model, tmp_path / "f", fid_model=str(tmp_path / "missing.pt"))
    assert "fid_model not found" in error_text(excinfo)


def test_empty_test_split_is_refused(embedded, tiny_model, tmp_path):
    datalist = tmp_path / "empty.json"
    datalist.write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(USER_ERRORS) as excinfo:
        evaluate(embedded, str(datalist), tiny_model, tmp_path / "e")
    assert "'test' list of datalist" in error_text(excinfo) and not (tmp_path / "e").exists()


@pytest.mark.parametrize("solver, steps", [("ddim", 3), ("ddpm", 4)])
def test_ddpm_baseline_samples_and_evaluates(embedded, small_datalist, tiny_ddpm, tmp_path, solver, steps):
    out = evaluate(
        embedded,
        str(small_datalist),
        tiny_ddpm,
        tmp_path / "e",
        configs=("inference_ddpm.json",),
        solver=solver,
        num_steps=steps,
    )
    values = json.loads((out / "metrics.json").read_text())
    assert values["nfe"] == steps and values["solver"] == solver and np.isfinite(values["psnr_paired"])
    card = torch.load(tiny_ddpm, weights_only=True)["card"]
    assert card["method"] == "ddpm" and card["schedule"]["num_train_timesteps"] == 1000


def test_ddpm_checkpoint_is_refused_by_the_flow_config(embedded, small_datalist, tiny_ddpm, tmp_path):
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", embedded, str(small_datalist), tiny_ddpm, tmp_path / "s")
    assert "method 'ddpm'" in error_text(excinfo)


def test_denoise_writes_on_the_source_grid(embedded, small_datalist, tiny_model, tmp_path):
    out = sample("mask_class_2d", embedded, str(small_datalist), tiny_model, tmp_path / "d", configs=("denoise.json",))
    info = json.loads((out / "info.json").read_text())
    assert info["task"] == "denoise" and info["nfe"] == 2
    first = json.loads(small_datalist.read_text())["test"][0]
    source = nib.load(embedded / first["image"])
    denoised = nib.load(out / json.loads((out / "datalist.json").read_text())["training"][0]["image"])
    assert denoised.shape == source.shape and np.allclose(denoised.affine, source.affine)


def test_denoising_benchmark_table(embedded, small_datalist, tiny_model, tmp_path):
    from monai.bundle import ConfigWorkflow

    from conftest import CONFIGS

    files = [str(CONFIGS / f) for f in ("inference.json", "denoise.json")]
    overrides = {**tiny("mask_class_2d"), "dataset_dir": str(embedded), "datalist": str(small_datalist)}
    wf = ConfigWorkflow(
        config_file=files,
        workflow_type=None,
        logging_file=False,
        run_id="benchmark",
        **overrides,
        ckpt_path=str(tiny_model),
        output_dir=str(tmp_path / "b"),
        num_steps=2,
        noise_levels=[0.05, 0.1],
    )
    wf.initialize()
    wf.run()
    rows = json.loads((tmp_path / "b/denoising.json").read_text())["rows"]
    assert [(r["noise"], r["level"]) for r in rows] == [
        ("gaussian", 0.05),
        ("gaussian", 0.1),
        ("rician", 0.05),
        ("rician", 0.1),
    ]
    gaussian = rows[0]
    assert gaussian["sigma_estimated"] == pytest.approx(0.05, rel=0.3)  # the wavelet estimate finds the level
    assert gaussian["psnr_nl-means"] > gaussian["psnr_noisy"]
    assert rows[1]["psnr_noisy"] < rows[0]["psnr_noisy"]  # more noise, lower PSNR
    assert "| gaussian | 0.05 |" in (tmp_path / "b/denoising.md").read_text()


def test_downstream_networks_train_score_and_reload(small_datalist, tmp_path):
    cases = load_cases(str(small_datalist), "training", use_mask=True, num_classes=3)
    rng = percentile_range(cases)
    transforms = input_transforms([16, 16], 4, rng)
    for task, outputs in (("segmenter", 4), ("classifier", 3)):
        net = downstream.train(task, cases, [16, 16], outputs, rng, num_labels=4, iterations=4, batch_size=4)
        score = downstream.score(task, net, cases, transforms, outputs)
        assert 0 <= score <= 1
        path = str(tmp_path / f"{task}.pt")
        downstream.save(path, task, net, [16, 16], outputs, rng)
        again = downstream.load(path, task, [16, 16], outputs)
        assert downstream.score(task, again, cases, transforms, outputs) == score
    with pytest.raises(ValueError, match="does not fit"):
        downstream.load(str(tmp_path / "segmenter.pt"), "classifier", [16, 16], 4)
