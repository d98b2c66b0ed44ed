"""Evaluation, the DDPM baseline, denoising and downstream networks, end to end on tiny models."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import USER_ERRORS, error_text, run_bundle, sample, tiny, train
from scripts import downstream
from scripts.data import input_transforms, load_cases, percentile_range
from scripts.evaluation import Evaluation

METRIC_KEYS = {"mmd", "hist_wasserstein", "ms_ssim_diversity", "ssim_paired", "psnr_paired", "mask_dice"}
METRIC_KEYS |= {"mask_dice_real", "correlation_in_mask", "conditional_ms_ssim", "fd_segmenter_features"}
METRIC_KEYS |= {"kid_segmenter_features", "fd_halves_generated", "fd_halves_real", "nfe", "seconds_per_sample"}
# sharpness, texture and contrast diversity, each beside the real images' own value
COMPARED = ("log_spectral_distance", "hf_power_ratio", "gradient_ratio")
SHARPNESS_KEYS = {*COMPARED, "fd_texture_features", "kid_texture_features"}
SHARPNESS_KEYS |= {f"{k}_halves_{s}" for k in (*COMPARED, "fd_texture") for s in ("generated", "real")}
METRIC_KEYS |= SHARPNESS_KEYS | {"contrast_spread", "contrast_spread_real", "contrast_spread_ratio"}


def evaluate(data_dir, datalist, ckpt, out, configs=(), **extra):
    extra.setdefault("segmenter_path", "")  # the shipped segmenter is for 64 x 64 models
    return sample("mask_class_2d", data_dir, datalist, ckpt, out, configs=(*configs, "evaluate.json"), **extra)


def test_evaluate_writes_every_metric(data_dir, small_datalist, tiny_model, segmenter, tmp_path):
    out = evaluate(data_dir, str(small_datalist), tiny_model, tmp_path / "eval", segmenter_path=segmenter)
    values = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(values) and "fid" in values
    assert all(np.isfinite(values[k]) for k in METRIC_KEYS)
    assert 0 <= values["mask_dice"] <= 1 and -1 <= values["ssim_paired"] <= 1 and values["nfe"] == 2
    assert values["num_generated"] == values["num_real"] == 4
    assert values["fid"] is None and "Inception" in values["skipped"]["fid"]
    assert 0 < values["conditional_ms_ssim"] <= 1 and values["conditional_ms_ssim_samples"] == 4
    intervals = ("mask_dice", "ssim_paired", "fd_segmenter_features", "kid_segmenter_features", "mmd")
    for key in (*intervals, *COMPARED, "fd_texture_features", "kid_texture_features", "contrast_spread"):
        lo, hi = values["ci95"][key]
        assert lo <= values[key] <= hi, key
    card = torch.load(tiny_model, weights_only=True)["card"]["provenance"]
    assert values["model"]["iterations"] == card["iterations"] > 0 and values["model"]["data"] == card["data"]
    assert (out / "intensity_kde.png").stat().st_size > 1000


def test_evaluate_skips_what_it_cannot_compute(data_dir, small_datalist, tiny_model, tmp_path):
    out = evaluate(data_dir, str(small_datalist), tiny_model, tmp_path / "e", segmenter_path=str(tmp_path / "none.pt"))
    values = json.loads((out / "metrics.json").read_text())
    assert values["mask_dice"] is values["fd_segmenter_features"] is None
    assert "train_segmenter.json" in values["skipped"]["segmenter"]
    assert values["class_accuracy"] is None and "train_classifier.json" in values["skipped"]["class_accuracy"]


def test_unconditional_evaluation_has_no_paired_metrics(data_dir, small_datalist, tmp_path):
    train("uncond_2d", data_dir, str(small_datalist), tmp_path / "train", epochs=2)
    run_bundle(
        ["inference.json", "variants/uncond_2d.json", "evaluate.json"],
        **tiny("uncond_2d"),
        dataset_dir=str(data_dir),
        datalist=str(small_datalist),
        ckpt_path=str(tmp_path / "train/model.pt"),
        output_dir=str(tmp_path / "eval"),
        num_steps=2,
    )
    values = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert values["num_generated"] == values["num_real"] == 4  # num_samples follows the test split
    assert values["ssim_paired"] is values["psnr_paired"] is values["mask_dice"] is None
    assert np.isfinite(values["mmd"]) and "paired" in values["skipped"]


def test_fid_with_a_local_feature_network(data_dir, small_datalist, tiny_model, tmp_path):
    pooled = (torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # (N, 16)
    features = torch.jit.script(torch.nn.Sequential(*pooled))
    features.save(str(tmp_path / "features.pt"))
    out = evaluate(data_dir, str(small_datalist), tiny_model, tmp_path / "e", fid_model=str(tmp_path / "features.pt"))
    values = json.loads((out / "metrics.json").read_text())
    assert values["fid"] is not None and values["fid"] >= 0 and "fid" not in values["skipped"]
    with pytest.raises(USER_ERRORS) as excinfo:
        evaluate(data_dir, str(small_datalist), tiny_model, tmp_path / "f", fid_model=str(tmp_path / "missing.pt"))
    assert "fid_model not found" in error_text(excinfo)


def test_empty_test_split_is_refused(data_dir, tiny_model, tmp_path):
    datalist = tmp_path / "empty.json"
    datalist.write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(USER_ERRORS) as excinfo:
        evaluate(data_dir, str(datalist), tiny_model, tmp_path / "e")
    assert "'test' list of datalist" in error_text(excinfo) and not (tmp_path / "e").exists()


@pytest.mark.parametrize("solver, steps", [("ddim", 3), ("ddpm", 4)])
def test_ddpm_baseline_samples_and_evaluates(data_dir, small_datalist, tiny_ddpm, tmp_path, solver, steps):
    out = evaluate(
        data_dir,
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


def test_ddpm_checkpoint_is_refused_by_the_flow_config(data_dir, small_datalist, tiny_ddpm, tmp_path):
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", data_dir, str(small_datalist), tiny_ddpm, tmp_path / "s")
    assert "method 'ddpm'" in error_text(excinfo)


def test_denoise_writes_on_the_source_grid(data_dir, small_datalist, tiny_model, tmp_path):
    out = sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, tmp_path / "d", configs=("denoise.json",))
    info = json.loads((out / "info.json").read_text())
    assert info["task"] == "denoise" and info["nfe"] == 2
    first = json.loads(small_datalist.read_text())["test"][0]
    source = nib.load(data_dir / first["image"])
    denoised = nib.load(out / json.loads((out / "datalist.json").read_text())["training"][0]["image"])
    assert denoised.shape == source.shape and np.allclose(denoised.affine, source.affine)


def test_denoising_benchmark_table(data_dir, small_datalist, tiny_model, tmp_path):
    from monai.bundle import ConfigWorkflow

    from conftest import CONFIGS

    files = [str(CONFIGS / f) for f in ("inference.json", "denoise.json")]
    overrides = {**tiny("mask_class_2d"), "dataset_dir": str(data_dir), "datalist": str(small_datalist)}
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
    result = json.loads((tmp_path / "b/denoising.json").read_text())
    rows = result["rows"]
    assert (result["num_cases"], result["num_series"]) == (4, 2)  # each test subject's slices are one series
    assert result["intensities"][1] > 100  # the images in their own units, not the model's
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
    lo, hi = gaussian["psnr_flow_minus_nl-means_ci95"]
    assert lo <= gaussian["psnr_flow_minus_nl-means"] <= hi
    assert (tmp_path / "b/denoising.png").is_file()


def test_downstream_networks_train_score_and_reload(small_datalist, tmp_path):
    cases = load_cases(str(small_datalist), "training", use_mask=True, num_classes=3)
    rng = percentile_range(cases)
    transforms = input_transforms([16, 16], 4, rng)
    for task, outputs in (("segmenter", 4), ("classifier", 3)):
        net = downstream.train(task, cases, [16, 16], outputs, rng, num_labels=4, iterations=4, batch_size=4)
        score = downstream.score(task, net, cases, transforms, outputs)
        per_case = downstream.scores_per_case(task, net, cases, transforms, outputs)
        assert per_case.shape == (len(cases),) and float(per_case.nanmean()) == pytest.approx(score)
        assert 0 <= score <= 1 and (task == "segmenter" or set(per_case.tolist()) <= {0.0, 1.0})
        path = str(tmp_path / f"{task}.pt")
        downstream.save(path, task, net, [16, 16], outputs, rng)
        again = downstream.load(path, task, [16, 16], outputs)
        assert downstream.score(task, again, cases, transforms, outputs) == score
    with pytest.raises(ValueError, match="does not fit"):
        downstream.load(str(tmp_path / "segmenter.pt"), "classifier", [16, 16], 4)


def _real_as_generated(folder, cases, transform=None):
    """A synthesis-like folder whose "generated" images are the real images themselves (optionally transformed)."""
    (folder / "images").mkdir(parents=True)
    entries = []
    for case in cases:
        img = nib.load(case["image"])
        data = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(
            nib.Nifti1Image(transform(data) if transform else data, img.affine), folder / f"images/{case['id']}.nii.gz"
        )
        entries.append({"image": f"images/{case['id']}.nii.gz", "label": case["label"], "class": case["class"]})
    (folder / "datalist.json").write_text(json.dumps({"training": entries}))
    (folder / "info.json").write_text(json.dumps({"nfe": 0}))


def _evaluation(folder, cases, segmenter, **extra):
    rng = percentile_range(cases)
    return Evaluation(
        str(folder), cases, input_transforms([16, 16], 4, None), [16, 16], 4, rng, segmenter_path=segmenter, **extra
    )


def test_real_images_as_the_generated_set_score_each_metric_ideally(small_datalist, segmenter, classifier, tmp_path):
    cases = load_cases(str(small_datalist), "test", use_mask=True, num_classes=3)
    _real_as_generated(tmp_path / "real", cases)
    values = _evaluation(tmp_path / "real", cases, segmenter, num_classes=3, classifier_path=classifier).run()
    assert values["class_accuracy"] == values["class_accuracy_real"] and "class_accuracy" in values["ci95"]
    assert values["mmd"] == pytest.approx(0, abs=1e-9) and values["hist_wasserstein"] == pytest.approx(0, abs=1e-9)
    assert values["fd_segmenter_features"] == pytest.approx(0, abs=1e-3)
    assert values["kid_segmenter_features"] == pytest.approx(0, abs=1e-9)
    assert values["fd_halves_generated"] == pytest.approx(values["fd_halves_real"], rel=1e-3)
    assert values["ssim_paired"] == pytest.approx(1) and values["correlation_in_mask"] == pytest.approx(1)
    assert values["psnr_paired"] == math.inf
    assert values["mask_dice"] == pytest.approx(values["mask_dice_real"])
    assert values["ms_ssim_diversity"] == pytest.approx(values["ms_ssim_diversity_real"])
    assert "model card" in values["normalisation"]
    assert values["hf_power_ratio"] == pytest.approx(1) and values["gradient_ratio"] == pytest.approx(1)
    assert values["log_spectral_distance"] == pytest.approx(0, abs=1e-9)
    assert values["fd_texture_features"] == pytest.approx(0, abs=1e-3)
    assert values["kid_texture_features"] == pytest.approx(0, abs=1e-9)
    for key in (*COMPARED, "fd_texture"):
        assert values[f"{key}_halves_generated"] == pytest.approx(values[f"{key}_halves_real"], rel=1e-3), key
    assert values["contrast_spread_real"] > 0 and values["contrast_spread"] is None  # no generator: no samples


def test_images_in_other_units_are_compared_on_a_normalised_scale(small_datalist, segmenter, tmp_path):
    cases = load_cases(str(small_datalist), "test", use_mask=True, num_classes=3)
    _real_as_generated(tmp_path / "real", cases, transform=lambda a: a * 0.1)
    # the real images of another scanner: a tenth of the model's units; the set is compared to itself
    tenth = [{**c, "image": str(tmp_path / "real" / f"images/{c['id']}.nii.gz")} for c in cases]
    values = Evaluation(
        str(tmp_path / "real"),
        tenth,
        input_transforms([16, 16], 4, None),
        [16, 16],
        4,
        percentile_range(cases),
        segmenter_path=segmenter,
    ).run()
    assert "own percentiles" in values["normalisation"]
    assert values["psnr_paired"] == math.inf and values["mask_dice"] == pytest.approx(values["mask_dice_real"])


def test_a_generated_set_that_does_not_match_the_real_cases_is_refused(small_datalist, segmenter, tmp_path):
    cases = load_cases(str(small_datalist), "test", use_mask=True, num_classes=3)
    _real_as_generated(tmp_path / "few", cases[:-1])
    with pytest.raises(ValueError, match="holds 3 cases for 4 real ones"):
        _evaluation(tmp_path / "few", cases, segmenter).run()
    _real_as_generated(tmp_path / "order", cases[::-1])
    with pytest.raises(ValueError, match="stands where real case"):
        _evaluation(tmp_path / "order", cases, segmenter).run()
    _real_as_generated(tmp_path / "grid", cases, transform=lambda a: a[::2])
    with pytest.raises(ValueError, match="is not on the grid of"):
        _evaluation(tmp_path / "grid", cases, segmenter).run()
    assert not (tmp_path / "grid" / "metrics.json").exists()


def test_trivial_baselines_run_as_samplers(data_dir, small_datalist, tiny_model, segmenter, tmp_path):
    for name in ("nearest_training", "tissue_means"):
        out = evaluate(
            data_dir,
            str(small_datalist),
            tiny_model,
            tmp_path / name,
            configs=("baselines.json",),
            baseline=name,
            segmenter_path=segmenter,
        )
        values = json.loads((out / "metrics.json").read_text())
        assert values["nfe"] == 0 and values["conditional_ms_ssim"] == pytest.approx(1.0)  # no noise: collapse


def test_baselines_copy_the_best_matching_training_image_and_paint_tissue_means(small_datalist):
    from scripts.baselines import NearestTrainingImage, TissueMeans
    from scripts.data import load_batch

    train_cases = load_cases(str(small_datalist), "training", use_mask=True, num_classes=3)
    transforms = input_transforms([16, 16], 4, percentile_range(train_cases))
    nearest = NearestTrainingImage(train_cases, transforms, 4)
    batch = load_batch(train_cases[2:4], transforms)  # training masks: their own images are the nearest
    images, nfe = nearest.generate(None, batch, [1, 16, 16], 0)
    assert nfe == 0 and torch.equal(images, torch.as_tensor(batch["image"]))
    painted, _ = TissueMeans(train_cases, transforms, 4).generate(None, batch, [1, 16, 16], 0)
    labels = torch.as_tensor(batch["label"]).long()
    means = [painted[labels == k].unique() for k in labels.unique()]
    assert len(means) >= 3 and all(len(m) == 1 for m in means)  # one value per tissue
    means = torch.cat(means).as_subclass(torch.Tensor)
    assert torch.equal(means, means.sort().values)  # T1: background < CSF < grey < white matter


def test_blurred_real_images_score_worse_than_the_real_halves_on_every_sharpness_and_texture_metric(data_dir, tmp_path):
    from scipy.ndimage import gaussian_filter

    cases = load_cases(str(data_dir / "datalist_2d.json"), "test", use_mask=True, num_classes=3)
    # 3.2 source pixels (1 mm) are about one pixel of the 64 x 64 grid (205 mm across)
    _real_as_generated(tmp_path / "blurred", cases, transform=lambda a: gaussian_filter(a, 3.2))
    rng = percentile_range(cases)
    values = Evaluation(str(tmp_path / "blurred"), cases, input_transforms([64, 64], 4, None), [64, 64], 4, rng).run()
    for key in ("hf_power_ratio", "gradient_ratio"):
        assert values["ci95"][key][1] < min(values[f"{key}_halves_real"], 1 / values[f"{key}_halves_real"]), key
    for key in ("log_spectral_distance", "fd_texture"):
        assert values[f"{key}_halves_generated"] > values[f"{key}_halves_real"], key
    assert values["fd_texture_features"] > values["fd_texture_halves_real"]
    assert values["ci95"]["log_spectral_distance"][0] > values["log_spectral_distance_halves_real"]
    assert values["ci95"]["kid_texture_features"][0] > 0
