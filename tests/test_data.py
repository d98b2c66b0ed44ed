"""Datalists, input checks and the way to the model's grid and back."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import USER_ERRORS, error_text
from scripts.data import input_transforms, load_cases, percentile_range, to_source_grid, to_units


def _datalist(tmp_path, content, name="datalist.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path.name


def test_load_cases_resolves_paths_and_numbers_cases(data_dir):
    cases = load_cases(str(data_dir / "datalist_2d.json"), "test", use_mask=True, num_classes=3)
    assert all(c["image"].startswith(str(data_dir)) for c in cases)
    assert [c["index"] for c in cases] == list(range(len(cases)))
    assert len({c["id"] for c in cases}) == len(cases)


@pytest.mark.parametrize(
    "content, kwargs, message",
    [
        ("{not json", {}, "not valid JSON"),
        ({"training": []}, {}, "has no 'test' list"),
        ({"test": []}, {}, "'test' list of datalist .* is empty"),
        ({"test": [{"image": "missing.nii.gz"}]}, {}, "image file not found: .*missing.nii.gz"),
        ({"test": [{"image": "img.nii.gz"}]}, {"use_mask": True}, "case 0 .* has no 'label'"),
        ({"test": [{"image": "img.nii.gz"}]}, {"num_classes": 3}, "has no 'class'"),
        ({"test": [{"image": "img.nii.gz", "class": 3}]}, {"num_classes": 3}, "class 3 is out of range 0..2"),
    ],
)
def test_bad_datalists_name_the_problem_and_file(tmp_path, content, kwargs, message):
    _nifti(tmp_path / "img.nii.gz", np.zeros((4, 4), np.float32))
    path = _datalist(tmp_path, content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_cases(path, "test", **kwargs)
    with pytest.raises(FileNotFoundError, match="datalist not found"):
        load_cases(str(tmp_path / "nope.json"), "test")


def _load(tmp_path, image=None, label=None, image_size=(16, 16), num_labels=4):
    case = {}
    if image is not None:
        case["image"] = str(tmp_path / _nifti(tmp_path / "image.nii.gz", image))
    if label is not None:
        case["label"] = str(tmp_path / _nifti(tmp_path / "label.nii.gz", label))
    return input_transforms(image_size, num_labels, [0.0, 100.0])(case)


@pytest.mark.parametrize(
    "image, label, message",
    [
        (np.zeros((8, 8, 8), np.float32), None, "expected a 2D image, got spatial shape \\(8, 8, 8\\)"),
        (np.zeros((8, 8), np.float32), np.full((8, 8), 7, np.uint8), "label values \\[7\\] are outside .* 0..3"),
        (np.zeros((8, 8), np.float32), np.full((8, 8), 1.5, np.float32), "label values \\[1.5\\]"),
        (np.zeros((8, 8), np.float32), np.zeros((8, 6), np.uint8), "label grid \\(8, 6\\) does not match"),
    ],
)
def test_bad_inputs_are_refused_with_the_file_name(tmp_path, image, label, message):
    with pytest.raises(USER_ERRORS) as excinfo:
        _load(tmp_path, image, label)
    text = error_text(excinfo)
    assert "nii.gz" in text
    assert re.search(message, text), text


def test_corrupt_image_is_refused(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(USER_ERRORS) as excinfo:
        input_transforms((16, 16), 4, None)({"image": str(tmp_path / "broken.nii.gz")})
    assert "broken.nii.gz" in error_text(excinfo)


def test_any_size_is_brought_to_the_model_and_intensities_scaled(tmp_path):
    image = np.linspace(0, 100, 30 * 20, dtype=np.float32).reshape(30, 20)
    label = (image > 50).astype(np.uint8)
    out = _load(tmp_path, image, label, image_size=(16, 16))
    assert out["image"].shape == (1, 16, 16) and out["label"].shape == (1, 16, 16)
    assert out["image"].min() >= -1 and out["image"].max() <= 1
    assert set(torch.unique(out["label"]).tolist()) == {0, 1}


def test_native_grid_keeps_the_voxels_and_patches_are_cut_from_them(tmp_path):
    image = np.arange(20 * 18 * 10, dtype=np.float32).reshape(20, 18, 10)
    path = str(tmp_path / _nifti(tmp_path / "image.nii.gz", image))
    out = input_transforms((16, 16, 16), 0, None, resize=False)({"image": path})["image"]
    assert out.shape == (1, 16, 16, 16)
    assert np.array_equal(np.asarray(out[0, :, :, 3:13]), image[2:18, 1:17])  # cropped and padded, not resampled
    patch = input_transforms((16, 16, 16), 0, None, "flip", resize=False, patch_size=(8, 8, 8))({"image": path})
    assert patch["image"].shape == (1, 8, 8, 8) and set(np.unique(np.asarray(patch["image"]))) <= set(image.ravel())


def test_outputs_go_back_to_the_source_grid_and_units(tmp_path):
    # a smooth image on an oblique, anisotropic grid
    affine = np.array([[0.0, -1.2, 0, 30], [0.9, 0.0, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    yy, xx = np.mgrid[0:40, 0:28]
    image = (50 + 40 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.float32)
    path = tmp_path / _nifti(tmp_path / "image.nii.gz", image, affine)
    case = input_transforms((32, 32), 4, [0.0, 100.0])({"image": str(tmp_path / path)})
    back = to_source_grid(to_units(case["image"], [0.0, 100.0]), case["image"])
    assert back.shape == (1, 40, 28)
    assert np.allclose(np.asarray(back.affine), affine)
    inner = np.asarray(back[0])[3:-3, 3:-3] - image[3:-3, 3:-3]
    assert np.abs(inner).mean() < 2.0  # resampled down to 32 and back: close to the source


def test_percentile_range_is_robust(tmp_path):
    values = np.concatenate([np.linspace(0, 100, 999), [1e6]]).astype(np.float32).reshape(40, 25)
    case = {"image": str(tmp_path / _nifti(tmp_path / "image.nii.gz", values))}
    lo, hi = percentile_range([case], 0.5, 99.5)
    assert lo == pytest.approx(0.5, abs=0.1) and 98 < hi < 101  # the outlier does not set the range
