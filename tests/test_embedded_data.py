"""The embedded MNI152 data set: labels, classes, splits and geometry."""

import json

import nibabel as nib
import numpy as np

from scripts.embedded_data import axial_level, tissue_labels


def test_tissue_labels_take_the_most_probable_tissue_inside_the_brain():
    brain = np.array([1, 1, 1, 0], bool)
    gm = np.array([0.1, 0.6, 0.2, 0.9])
    wm = np.array([0.1, 0.3, 0.7, 0.0])
    assert tissue_labels(brain, gm, wm).tolist() == [1, 2, 3, 0]


def test_axial_levels_split_the_extent_in_thirds():
    levels = [axial_level(z, 10, 39) for z in range(10, 40)]
    assert levels == [0] * 10 + [1] * 10 + [2] * 10


def test_embedded_data_set(embedded):
    data = json.loads((embedded / "datalist_2d.json").read_text())
    splits = {k: [c["image"] for c in data[k]] for k in ("training", "validation", "test")}
    assert len(splits["training"]) > 80 and len(splits["test"]) >= 10 and len(splits["validation"]) >= 10
    assert not set(splits["training"]) & set(splits["test"])
    assert not set(splits["training"]) & set(splits["validation"])
    assert {c["class"] for c in data["training"]} == {0, 1, 2}
    classes = [c["class"] for c in sorted(data["training"] + data["test"], key=lambda c: c["image"])]
    assert classes == sorted(classes)  # levels grow from inferior to superior
    case = data["test"][0]
    image, label = nib.load(embedded / case["image"]), nib.load(embedded / case["label"])
    assert image.ndim == 2 and image.shape == label.shape
    assert np.array_equal(image.affine, label.affine)
    values = np.unique(np.asarray(label.dataobj))
    assert set(values.tolist()) <= {0, 1, 2, 3} and len(values) == 4
    img = np.asarray(image.dataobj)
    assert img[np.asarray(label.dataobj) == 0].max() == 0  # skull-stripped: background is zero
    # white matter is brighter than grey matter in T1
    lab = np.asarray(label.dataobj)
    assert img[lab == 3].mean() > img[lab == 2].mean() > img[lab == 1].mean()
    volume = json.loads((embedded / "datalist_3d.json").read_text())["training"][0]
    assert nib.load(embedded / volume["image"]).ndim == 3
