"""The synthetic-subject data set: subjects, splits, labels on their images, determinism and bad input."""

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from scripts.classes import axial_level
from scripts.synthetic_subjects import TEMPLATE_FILES, build, nilearn_template_dir, tissue_labels


def test_tissue_labels_take_the_most_probable_tissue_inside_the_brain():
    brain = np.array([1, 1, 1, 0], bool)
    gm = np.array([0.1, 0.6, 0.2, 0.9])
    wm = np.array([0.1, 0.3, 0.7, 0.0])
    assert tissue_labels(brain, gm, wm).tolist() == [1, 2, 3, 0]


def test_axial_levels_split_the_extent_in_thirds():
    levels = [axial_level(z, 10, 39) for z in range(10, 40)]
    assert levels == [0] * 10 + [1] * 10 + [2] * 10


def test_subjects_are_split_by_subject_and_differ(data_dir):
    data = json.loads((data_dir / "datalist_2d.json").read_text())
    subjects = {k: {c["subject"] for c in data[k]} for k in ("training", "validation", "test")}
    assert [len(s) for s in subjects.values()] == [3, 1, 2]
    assert not subjects["training"] & subjects["test"] and not subjects["training"] & subjects["validation"]
    assert {c["class"] for c in data["training"]} == {0, 1, 2}
    record = json.loads((data_dir / "subjects.json").read_text())["subjects"]
    assert all(0.9 <= s["brain_volume_ratio"] <= 1.1 for s in record)
    assert all(2.0 < s["max_displacement_mm"] <= 6.5 for s in record)
    # the same axial plane of two subjects holds different anatomy and intensities
    a, b = (next(c for c in data[k] if c["image"].endswith("z-090.nii.gz")) for k in ("training", "test"))
    labels = [np.asarray(nib.load(data_dir / c["label"]).dataobj) for c in (a, b)]
    assert (labels[0] != labels[1]).mean() > 0.05


def test_slices_are_skull_stripped_t1_with_labels_on_their_grid(data_dir):
    data = json.loads((data_dir / "datalist_2d.json").read_text())
    case = data["test"][len(data["test"]) // 2]
    image, label = nib.load(data_dir / case["image"]), nib.load(data_dir / case["label"])
    assert image.ndim == 2 and image.shape == label.shape
    assert np.array_equal(image.affine, label.affine)
    img, lab = np.asarray(image.dataobj), np.asarray(label.dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 3}
    assert img[lab == 0].max() == 0  # skull-stripped: background is zero
    assert img[lab == 3].mean() > img[lab == 2].mean() > img[lab == 1].mean()  # T1: white > grey > CSF
    volumes = json.loads((data_dir / "datalist_3d.json").read_text())["test"]
    volume = next(v for v in volumes if v["subject"] == case["subject"])
    vol, vol_lab = nib.load(data_dir / volume["image"]), nib.load(data_dir / volume["label"])
    assert vol.ndim == 3 and vol.shape == vol_lab.shape and np.allclose(vol.header.get_zooms(), 2.0)
    # the subject's 2 mm volume holds the same labels as its 1 mm slice at the same world positions
    i, j = np.nonzero(lab >= 0)
    world = label.affine @ np.stack([i, j, np.zeros_like(i), np.ones_like(i)])
    vox = np.rint(np.linalg.inv(vol_lab.affine) @ world).astype(int)[:3]
    inside = np.all((vox >= 0) & (vox < np.array(vol.shape)[:, None]), axis=0)
    coarse = np.asarray(vol_lab.dataobj)[tuple(vox[:, inside])]
    fine = lab[i[inside], j[inside]]
    brain = (fine > 0) | (coarse > 0)
    assert (coarse == fine)[brain].mean() > 0.75


def test_the_data_set_is_a_function_of_the_seed(tmp_path):
    first = build(str(tmp_path / "a"), subjects=(1, 1, 1), slice_step_mm=30)
    again = build(str(tmp_path / "b"), subjects=(1, 1, 1), slice_step_mm=30)
    other = build(str(tmp_path / "c"), subjects=(1, 1, 1), slice_step_mm=30, seed=1)
    case = json.loads((tmp_path / "a" / "datalist_3d.json").read_text())["test"][0]["image"]
    arrays = [np.asarray(nib.load(f"{root}/{case}").dataobj) for root in (first, again, other)]
    assert np.array_equal(arrays[0], arrays[1])
    assert not np.array_equal(arrays[0], arrays[2])


def _template_copy(tmp_path):
    folder = tmp_path / "template"
    folder.mkdir()
    for name in TEMPLATE_FILES.values():
        shutil.copy(f"{nilearn_template_dir()}/{name}", folder / name)
    return folder


def test_missing_or_corrupt_template_is_named_and_nothing_is_written(tmp_path):
    template = _template_copy(tmp_path)
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("earlier data")
    gm = template / TEMPLATE_FILES["gm"]
    with gzip.open(gm, "rb") as f:
        head = f.read(2000)
    gm.write_bytes(gzip.compress(head))  # a truncated file
    with pytest.raises(ValueError, match=TEMPLATE_FILES["gm"]):
        build(str(out), subjects=(1, 1, 1), template_dir=str(template))
    gm.unlink()
    with pytest.raises(FileNotFoundError, match=TEMPLATE_FILES["gm"]):
        build(str(out), subjects=(1, 1, 1), template_dir=str(template))
    assert (out / "keep.txt").read_text() == "earlier data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "template"]  # no staging folder left behind
