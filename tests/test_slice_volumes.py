"""One's own data: ``slice_volumes.py`` (3D volumes -> a 2D datalist split by subject) and the BraTS converter,
on small real volumes cut from the synthetic subjects."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.classes import CLASS_RULES, volume_classes
from scripts.convert import BRATS_LABEL_MAP, brats
from scripts.slice_volumes import slice_volumes

SPLITS = ("training", "validation", "test")


def _subjects(data_dir: Path) -> list[tuple[str, nib.Nifti1Image, nib.Nifti1Image]]:
    """Every subject's 2 mm image and label volume, cropped to 24 x 24 x 20 around the middle (small and real)."""
    out = []
    for split in SPLITS:
        for case in json.loads((data_dir / "datalist_3d.json").read_text())[split]:
            image, label = nib.load(data_dir / case["image"]), nib.load(data_dir / case["label"])
            x, y, z = (s // 2 for s in image.shape)
            box = (slice(x - 12, x + 12), slice(y - 12, y + 12), slice(z - 10, z + 10))
            out.append((case["subject"], image.slicer[box], label.slicer[box]))
    return out


def test_slices_are_split_by_subject_on_their_volumes_grid(data_dir, tmp_path):
    src = tmp_path / "mine"
    for subject, image, label in _subjects(data_dir):
        (src / "images").mkdir(parents=True, exist_ok=True)
        (src / "labels").mkdir(exist_ok=True)
        nib.save(image, src / "images" / f"{subject}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj) * 10, label.affine), src / "labels" / f"{subject}.nii.gz")
    remap = {0: 0, 10: 1, 20: 2, 30: 3}  # labels stored as 0/10/20/30
    datalist = slice_volumes(str(src), str(tmp_path / "out"), step_mm=4, label_map=remap, fractions=(0.5, 0.25, 0.25))
    content = json.loads(Path(datalist).read_text())
    by_split = {s: {c["subject"] for c in content[s]} for s in SPLITS}
    assert all(by_split[s] for s in SPLITS)
    assert not (by_split["training"] & by_split["validation"] or by_split["training"] & by_split["test"])
    assert not by_split["validation"] & by_split["test"]
    case = content["training"][0]
    subject = case["subject"]
    volume = nib.load(src / "images" / f"{subject}.nii.gz")
    label = np.asarray(nib.load(src / "labels" / f"{subject}.nii.gz").dataobj) // 10
    cases = [c for c in content["training"] if c["subject"] == subject]
    assert len(cases) == 10  # 20 planes of 2 mm, every 4 mm
    _, classes = volume_classes(CLASS_RULES["axial_level"], label, volume.affine)
    for c in cases:
        k = int(c["image"].split("plane-")[1][:3])
        sliced = nib.load(tmp_path / "out" / c["image"])
        assert np.allclose(sliced.affine[:3, 3], (volume.affine @ [0, 0, k, 1])[:3])  # where it lay
        assert np.array_equal(sliced.get_fdata(), volume.get_fdata()[:, :, k])
        assert np.array_equal(nib.load(tmp_path / "out" / c["label"]).get_fdata(), label[:, :, k])
        assert c["class"] == classes[k]
    with pytest.raises(ValueError, match=r"labels.*sub-\d+\.nii\.gz: label values \[10"):
        slice_volumes(str(src), str(tmp_path / "unmapped"))
    assert not (tmp_path / "unmapped").exists()


BRATS_NAMES = ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-001", "BraTS-GLI-00005-000"]


def test_brats_layout_is_converted_with_its_labels_remapped(data_dir, tmp_path):
    """2021 files (enhancing tumour 4) and 2023 files (3) both give 0..3; an unknown label is refused, named."""
    src = tmp_path / "BraTS2023"
    for i, (name, (_, image, label)) in enumerate(zip(BRATS_NAMES, _subjects(data_dir))):
        seg = np.asarray(label.dataobj).astype(np.uint8)  # tissue labels 0..3 stand in for tumour labels
        if i % 2:
            seg[seg == 3] = 4  # a 2021 file
        (src / name).mkdir(parents=True)
        for kind in ("t1n", "t1c", "t2w", "t2f"):
            nib.save(image, src / name / f"{name}-{kind}.nii.gz")
        nib.save(nib.Nifti1Image(seg, label.affine), src / name / f"{name}-seg.nii.gz")
    datalist = brats(str(src), str(tmp_path / "out"), mode="3d", fractions=(0.5, 0.25, 0.25))
    content = json.loads(Path(datalist).read_text())
    assert content["label_map"] == {str(k): v for k, v in BRATS_LABEL_MAP.items()}
    items = [c for s in SPLITS for c in content[s]]
    assert sorted(c["subject"] for c in items) == BRATS_NAMES
    for (_, _, label), name in zip(_subjects(data_dir), BRATS_NAMES):
        item = next(c for c in items if c["subject"] == name)
        assert np.array_equal(nib.load(tmp_path / "out" / item["label"]).get_fdata(), label.get_fdata())
    slices = brats(str(src), str(tmp_path / "out2d"), mode="2d", modality="t2f")
    assert all("class" in c for s in SPLITS for c in json.loads(Path(slices).read_text())[s])
    bad = src / BRATS_NAMES[0] / f"{BRATS_NAMES[0]}-seg.nii.gz"
    seg = nib.load(bad)
    nib.save(nib.Nifti1Image(np.where(np.asarray(seg.dataobj) == 1, 5, seg.dataobj).astype(np.uint8), seg.affine), bad)
    with pytest.raises(ValueError, match=f"{bad}: label values \\[5\\] are not in the label map"):
        brats(str(src), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
