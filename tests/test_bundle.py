"""The bundle end to end: every variant trains on the synthetic subjects and samples; reproducibility; bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import USER_ERRORS, VARIANTS, datalist_for, error_text, sample, tiny, train


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_and_samples(variant, data_dir, small_datalist, tmp_path):
    datalist = datalist_for(variant, data_dir, small_datalist)
    losses = train(variant, data_dir, datalist, tmp_path / "train", epochs=40 if variant.endswith("3d") else 20)
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    assert (tmp_path / "train/previews").is_dir() and (tmp_path / "train/checkpoint.pt").is_file()

    out = sample(variant, data_dir, datalist, tmp_path / "train/model.pt", tmp_path / "samples")
    info = json.loads((out / "info.json").read_text())
    entries = json.loads((out / "datalist.json").read_text())["training"]
    assert info["nfe"] == 2 and info["solver"] == "euler" and info["variant"] == variant
    assert (out / "samples.png").stat().st_size > 1000
    conditioned = not variant.startswith("uncond")
    test_cases = json.loads(Path(datalist).read_text())["test"]
    assert len(entries) == (len(test_cases) if conditioned else 3)
    for entry, case in zip(entries, test_cases):
        generated = nib.load(out / entry["image"])
        assert np.isfinite(generated.get_fdata()).all()
        if conditioned:  # written on the grid of its mask (or image): shape and affine
            reference = nib.load(Path(datalist).parent / case.get("label", case["image"]))
            assert generated.shape == reference.shape
            assert np.allclose(generated.affine, reference.affine)
        else:
            assert generated.shape == tuple(tiny(variant)["image_size"])
        if "label" in entry:
            assert (out / entry["label"]).is_file()
        assert ("class" in entry) == (conditioned and "class" in case)  # the source's class travels with it


def test_same_seed_same_images(data_dir, small_datalist, tiny_model, tmp_path):
    def images(seed, name, **extra):
        out = sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, tmp_path / name, seed=seed, **extra)
        return [nib.load(p).get_fdata() for p in sorted((out / "images").glob("*.nii.gz"))]

    a, b, c, d = images(3, "a"), images(3, "b"), images(3, "c", batch_size=1), images(4, "d")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.allclose(x, y, atol=1e-3) for x, y in zip(a, c))  # across batch sizes, up to float rounding
    assert not any(np.allclose(x, z, atol=1.0) for x, z in zip(a, d))


def _bad_datalist(tmp_path: Path, data_dir: Path, **change) -> str:
    case = json.loads((data_dir / "datalist_2d.json").read_text())["test"][0]
    case = {k: str(data_dir / v) if k in ("image", "label") else v for k, v in case.items()}
    case.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"test": [{k: v for k, v in case.items() if v is not None}]}))
    return str(path)


def _write(path: Path, array) -> str:
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return str(path)


BAD_INPUTS = {
    "no label for a mask variant": (lambda tmp, emb: {"label": None}, "has no 'label'"),
    "class out of range": (lambda tmp, emb: {"class": 5}, "class 5 is out of range 0..2"),
    "labels outside the set": (
        lambda tmp, emb: {"label": _write(tmp / "seven.nii.gz", np.full((20, 20), 7, np.uint8))},
        "seven.nii.gz: label values \\[7\\] are outside the configured set 0..3",
    ),
    "wrong dimensionality": (
        lambda tmp, emb: {"label": _write(tmp / "vol.nii.gz", np.zeros((8, 8, 8), np.uint8))},
        "vol.nii.gz: expected a 2D label",
    ),
    "corrupt file": (
        lambda tmp, emb: {
            "label": str((tmp / "corrupt.nii.gz").write_bytes(b"\x1f\x8bgarbage") and tmp / "corrupt.nii.gz")
        },
        "corrupt.nii.gz",
    ),
    "missing file": (lambda tmp, emb: {"label": str(tmp / "gone.nii.gz")}, "label file not found: .*gone.nii.gz"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_clearly_and_writes_nothing(name, data_dir, tiny_model, tmp_path):
    change, message = BAD_INPUTS[name]
    datalist = _bad_datalist(tmp_path, data_dir, **change(tmp_path, data_dir))
    out = tmp_path / "out"
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", data_dir, datalist, tiny_model, out)
    assert re.search(message, error_text(excinfo)), error_text(excinfo)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind


def test_failed_run_keeps_earlier_results(data_dir, small_datalist, tiny_model, tmp_path):
    out = sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, tmp_path / "out")
    before = sorted(p.name for p in (out / "images").iterdir())
    with pytest.raises(USER_ERRORS):
        sample("mask_class_2d", data_dir, _bad_datalist(tmp_path, data_dir, **{"class": 9}), tiny_model, out)
    assert sorted(p.name for p in (out / "images").iterdir()) == before


def test_checkpoint_of_another_variant_or_shape_is_refused(data_dir, small_datalist, tiny_model, tmp_path):
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_2d", data_dir, str(small_datalist), tiny_model, tmp_path / "a")
    assert "does not fit this config" in error_text(excinfo) and "num_classes" in error_text(excinfo)
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, tmp_path / "b", image_size=[32, 32])
    assert "image_size is [16, 16]" in error_text(excinfo)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_split_is_refused(data_dir, small_datalist, tiny_model, tmp_path):
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, tmp_path / "a", split="holdout")
    assert "has no 'holdout' list" in error_text(excinfo)


def test_output_dir_holding_inputs_is_refused(data_dir, small_datalist, tiny_model):
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, data_dir)
    assert "holds input" in error_text(excinfo)
    assert (data_dir / "datalist_2d.json").is_file()


def test_weights_load_even_when_the_intensity_range_is_given(data_dir, small_datalist, tiny_model, tmp_path):
    card_range = torch.load(tiny_model, weights_only=True)["card"]["intensity_range"]
    runs = {}
    for name, extra in (("card", {}), ("given", {"intensity_range": card_range})):
        out = sample("mask_class_2d", data_dir, str(small_datalist), tiny_model, tmp_path / name, **extra)
        runs[name] = [nib.load(p).get_fdata() for p in sorted((out / "images").glob("*.nii.gz"))]
    # the same range: the same images, so the weights were loaded (an untrained network gives others)
    assert all(np.array_equal(a, b) for a, b in zip(runs["card"], runs["given"]))


def test_a_bad_input_is_the_last_line_a_bundle_command_prints(data_dir, tmp_path):
    import subprocess
    import sys

    from conftest import CONFIGS

    missing = tmp_path / "missing.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--datalist",
            str(missing),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: datalist not found: {missing}"
    assert not (tmp_path / "out").exists()


EOF = "EOFError: Compressed file ended before the end-of-stream marker was reached"


@pytest.mark.parametrize(
    "configs, broken, reason",
    [
        (["train.json"], "image", EOF),
        (["inference.json"], "label", "ImageFileError: Cannot work out file type of"),  # cut inside its header
        (["inference.json", "evaluate.json"], "image", EOF),
        (["inference.json", "denoise.json"], "image", EOF),
    ],
)
def test_a_truncated_nifti_ends_every_workflow_naming_it(configs, broken, reason, tmp_path):
    """A .nii.gz cut in half (nibabel's error deep inside MONAI's LoadImage): the workflow (the shipped model's
    configs) ends with status 1, its last line names the file and the problem, and no output folder is left."""
    import subprocess
    import sys

    from conftest import CONFIGS

    rng = np.random.default_rng(0)
    cases = []
    for k in range(3):
        image, label = rng.uniform(0, 100, (24, 24)).astype(np.float32), rng.integers(0, 4, (24, 24), dtype=np.uint8)
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"image{k}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"label{k}.nii.gz")
        cases.append({"image": f"image{k}.nii.gz", "label": f"label{k}.nii.gz", "class": k})
    cut = tmp_path / f"{broken}1.nii.gz"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    datalist, out = tmp_path / "datalist.json", tmp_path / "out"
    datalist.write_text(json.dumps({s: cases for s in ("training", "validation", "test")}))
    files = str([str(CONFIGS / c) for c in configs])
    overrides = {"datalist": datalist, "dataset_dir": tmp_path, "output_dir": out, "num_steps": 2}
    args = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {cut}: cannot read image ({reason}")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nor a staging one
