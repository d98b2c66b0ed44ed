"""Inference from a folder of one's own masks (``--masks_dir``): 2D masks and 3D mask volumes through the real
bundle workflow, and the one class rule the data builder, inference and the DICOM app share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import USER_ERRORS, error_text, sample
from motfm_deploy.images import Plane
from operators.synthesis import plane_classes
from scripts.classes import CLASS_RULES, volume_classes
from scripts.masks import mask_cases
from scripts.synthetic_subjects import subject_volume

AXIAL = CLASS_RULES["axial_level"]


def _test_slices(data_dir: Path, count: int) -> list[dict]:
    cases = json.loads((data_dir / "datalist_2d.json").read_text())["test"]
    return cases[:: len(cases) // count][:count]


def _cropped_volume(data_dir: Path, planes: int = 12) -> nib.Nifti1Image:
    """A test subject's 2 mm label volume, cut to ``planes`` axial planes around its middle (a smaller run)."""
    _, label = subject_volume(str(data_dir))
    z = label.shape[2] // 2 - planes // 2
    return label.slicer[:, :, z : z + planes]


def _las(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same volume stored with its first and last axes reversed (LAS, feet-head running down the index)."""
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[[0, 2], 3] = [image.shape[0] - 1, image.shape[2] - 1]
    return nib.Nifti1Image(np.asarray(image.dataobj)[::-1, :, ::-1].copy(), image.affine @ flip)


def test_masks_dir_2d_masks_and_a_3d_volume(data_dir, tiny_model, tmp_path):
    """2D masks take their class from --mask_classes; a mask volume becomes one generated volume on its own grid
    (shape and affine), its planes classed by the axial-level rule; nothing else written."""
    masks = tmp_path / "masks"
    masks.mkdir()
    slices = _test_slices(data_dir, 2)
    for case in slices:
        shutil.copy(data_dir / case["label"], masks / Path(case["label"]).name)
    volume = _las(_cropped_volume(data_dir))
    nib.save(volume, masks / "subject.nii.gz")
    classes = {Path(c["label"]).name: c["class"] for c in slices}
    (tmp_path / "classes.json").write_text(json.dumps(classes))

    out = sample(
        "mask_class_2d", data_dir, "", tiny_model, tmp_path / "out",
        masks_dir=str(masks), mask_classes=str(tmp_path / "classes.json"),
    )  # fmt: skip
    entries = json.loads((out / "datalist.json").read_text())["training"]
    assert [e["image"] for e in entries] == [f"images/{n.removesuffix('.nii.gz')}.nii.gz" for n in sorted(classes)] + [
        "images/subject.nii.gz"
    ]
    for entry in entries:
        mask = nib.load(masks / Path(entry["label"]).name)
        generated = nib.load(out / entry["image"])
        assert generated.shape == mask.shape and np.allclose(generated.affine, mask.affine)
        assert np.isfinite(generated.get_fdata()).all() and generated.get_fdata().std() > 0
        assert np.array_equal(nib.load(out / entry["label"]).get_fdata(), mask.get_fdata())
    assert [e.get("class") for e in entries] == [*classes.values(), None]
    info = json.loads((out / "info.json").read_text())
    assert info["num_cases"] == 3 and info["generated"] == 2 + volume.shape[2]
    planes = mask_cases(str(masks), 4, 3, {"rule": "axial_level"}, str(tmp_path / "classes.json"))[2:]
    assert [p["class"] for p in planes] == volume_classes(AXIAL, np.asarray(volume.dataobj), volume.affine)[1]
    assert [p["class"] for p in planes][0] == 2 and [p["class"] for p in planes][-1] == 0  # LAS: head first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.json", "masks", "out"]


def _axial_planes(label: nib.Nifti1Image) -> list[Plane]:
    """The DICOM planes (LPS) of a RAS-aligned volume's axial slices, as the app reads them from a series."""
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    origin = ras_to_lps @ label.affine[:3, 3]
    step = label.affine[:3, :3]
    return [
        Plane(
            dataset=None, frame=None, position=origin + ras_to_lps @ step[:, 2] * z,
            row_cosine=np.array([1.0, 0, 0]), column_cosine=np.array([0.0, 1, 0]),
            spacing=np.array([2.0, 2.0]), shape=label.shape[:2],
        )
        for z in range(label.shape[2])
    ]  # fmt: skip


def test_the_builder_inference_and_the_app_share_one_class_rule(data_dir):
    """For the same volume: the data builder's slice classes (its 2D datalist), ``volume_classes`` (inference
    from a mask volume, in either storage order) and the app's classes of the stack's planes agree."""
    _, label = subject_volume(str(data_dir))
    labels = np.asarray(label.dataobj)
    _, classes = volume_classes(AXIAL, labels, label.affine)
    assert sorted(set(classes)) == [0, 1, 2] and classes == sorted(classes)
    assert volume_classes(AXIAL, np.asarray(_las(label).dataobj), _las(label).affine)[1] == classes[::-1]
    app = plane_classes(AXIAL, _axial_planes(label), labels.transpose(2, 1, 0))
    assert app == classes
    # the builder's 1 mm slices: same thirds of the same subject's extent, up to the 2 mm volume's rounding
    subject = json.loads((data_dir / "datalist_3d.json").read_text())["test"][0]["subject"]
    built = [c for c in json.loads((data_dir / "datalist_2d.json").read_text())["test"] if c["subject"] == subject]
    world_z = [nib.load(data_dir / c["label"]).affine[2, 3] for c in built]
    nearest = [int(round((z - label.affine[2, 3]) / label.affine[2, 2])) for z in world_z]
    agree = [classes[k] == c["class"] for k, c in zip(nearest, built)]
    assert np.mean(agree) > 0.9, agree


def test_a_lone_2d_mask_of_a_class_model_says_how_to_give_its_class(data_dir, tiny_model, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    case = _test_slices(data_dir, 1)[0]
    shutil.copy(data_dir / case["label"], masks / "slice.nii.gz")
    with pytest.raises(USER_ERRORS) as excinfo:
        sample("mask_class_2d", data_dir, "", tiny_model, tmp_path / "out", masks_dir=str(masks))
    text = error_text(excinfo)
    assert str(masks / "slice.nii.gz") in text and "--mask_classes" in text and "datalist" in text, text
    (tmp_path / "wrong.json").write_text(json.dumps({"other.nii.gz": 1}))
    with pytest.raises(USER_ERRORS) as excinfo:
        sample(
            "mask_class_2d", data_dir, "", tiny_model, tmp_path / "out",
            masks_dir=str(masks), mask_classes=str(tmp_path / "wrong.json"),
        )  # fmt: skip
    assert "names files not in" in error_text(excinfo) and "other.nii.gz" in error_text(excinfo)
    assert not (tmp_path / "out").exists()
