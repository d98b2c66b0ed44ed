"""Converters of MSD Task01 BrainTumour and CAMUS: run on tiny folders laid out like the real releases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.convert import camus, msd_brain, split_patients
from scripts.data import input_transforms, load_cases

ROOT = Path(__file__).resolve().parents[1]

SPLITS = ("training", "validation", "test")
FRACTIONS = (0.5, 0.25, 0.25)

# MSD Task01: dataset.json as released (keys, names, "./" paths, test images as plain strings)
MSD_MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
MSD_CASES = [f"BRATS_{i:03d}" for i in range(1, 7)]
MSD_SHAPE = (8, 8, 6)
MSD_AFFINE = np.array([[-1.0, 0, 0, 119], [0, -1.0, 0, 119], [0, 0, 1.0, -77], [0, 0, 0, 1]])  # 1 mm, LPS-flipped
BRAIN_Z = [1, 2, 3, 4]  # slices 0 and 5 are all zero (outside the brain)
TUMOUR_Z = [2, 3]

# CAMUS NIfTI release: database_nifti/patientNNNN/{patient}_{view}_{phase}[_gt].nii.gz, Info_{view}.cfg
CAMUS_PATIENTS = [f"patient{i:04d}" for i in range(1, 7)]
CAMUS_SHAPE = (12, 10)
CAMUS_AFFINE = np.diag([0.154, 0.308, 1.0, 1.0])
CAMUS_QUALITY = {("patient0002", "2CH"): "Medium", ("patient0003", "4CH"): "Poor"}  # the rest: Good
CAMUS_OFFICIAL = {"training": CAMUS_PATIENTS[:4], "validation": CAMUS_PATIENTS[4:5], "test": CAMUS_PATIENTS[5:]}
VIEW_PHASE_CLASS = {"2CH_ED": 0, "2CH_ES": 1, "4CH_ED": 2, "4CH_ES": 3}


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def make_msd(root: Path) -> Path:
    """A Task01_BrainTumour folder: 6 labelled cases (8, 8, 6, 4 modalities), one test image, a macOS '._' file."""
    rng = np.random.default_rng(0)
    for name in MSD_CASES:
        image = np.zeros((*MSD_SHAPE, 4), np.float32)
        for c in range(4):  # each modality in its own intensity band, so a wrong channel cannot pass
            image[1:7, 1:7, BRAIN_Z[0] : BRAIN_Z[-1] + 1, c] = rng.uniform(10, 100, (6, 6, 4)) + 1000 * c
        label = np.zeros(MSD_SHAPE, np.uint8)
        label[2:6, 2:6, TUMOUR_Z[0] : TUMOUR_Z[-1] + 1] = 1
        label[3:5, 3:5, TUMOUR_Z[0]] = 2
        label[3:5, 3:5, TUMOUR_Z[-1]] = 3
        _save(image, MSD_AFFINE, root / "imagesTr" / f"{name}.nii.gz")
        _save(label, MSD_AFFINE, root / "labelsTr" / f"{name}.nii.gz")
    _save(np.ones((*MSD_SHAPE, 4), np.float32), MSD_AFFINE, root / "imagesTs" / "BRATS_485.nii.gz")
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble junk
    meta = {
        "name": "BRATS",
        "description": "Gliomas segmentation tumour and oedema in on brain images",
        "reference": "https://www.med.upenn.edu/sbia/brats2017.html",
        "licence": "CC-BY-SA 4.0",
        "release": "2.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": MSD_MODALITIES,
        "labels": MSD_LABELS,
        "numTraining": len(MSD_CASES),
        "numTest": 1,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in MSD_CASES],
        "test": ["./imagesTs/BRATS_485.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root


def make_camus(root: Path, split_files: bool = True) -> Path:
    """A CAMUS_public folder: 6 patients with ED/ES frames (12, 10), masks, half sequences, Info_*.cfg."""
    rng = np.random.default_rng(1)
    for patient in CAMUS_PATIENTS:
        folder = root / "database_nifti" / patient
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                stem = folder / f"{patient}_{view}_{phase}"
                _save(rng.integers(0, 256, CAMUS_SHAPE, dtype=np.uint8), CAMUS_AFFINE, Path(f"{stem}.nii.gz"))
                _save(rng.integers(0, 4, CAMUS_SHAPE, dtype=np.uint8), CAMUS_AFFINE, Path(f"{stem}_gt.nii.gz"))
            sequence = rng.integers(0, 256, (*CAMUS_SHAPE, 13), dtype=np.uint8)
            _save(sequence, CAMUS_AFFINE, folder / f"{patient}_{view}_half_sequence.nii.gz")
            _save(sequence // 64, CAMUS_AFFINE, folder / f"{patient}_{view}_half_sequence_gt.nii.gz")
            quality = CAMUS_QUALITY.get((patient, view), "Good")
            (folder / f"Info_{view}.cfg").write_text(
                f"ED: 1\nES: 13\nNbFrame: 13\nSex: F\nAge: 75\nImageQuality: {quality}\nEF: 53\nFrameRate: 50.0\n"
            )
    if split_files:
        for split, name in zip(SPLITS, ("training", "validation", "testing")):
            (root / "database_split").mkdir(exist_ok=True)
            (root / "database_split" / f"subgroup_{name}.txt").write_text("\n".join(CAMUS_OFFICIAL[split]) + "\n")
    return root


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def stem(path: str) -> str:
    return os.path.basename(path).removesuffix(".nii.gz")


def splits_by_patient(datalist: str, patient_of) -> dict[str, set[str]]:
    """The patients of each split (``patient_of`` maps an item's image path to its patient)."""
    content = json.loads(Path(datalist).read_text())
    items = [item for s in SPLITS for item in content[s]]
    assert all(item["subject"] == patient_of(item["image"]) for item in items)  # evaluation's halves use it
    return {s: {patient_of(item["image"]) for item in content[s]} for s in SPLITS}


def assert_disjoint(groups: dict[str, set[str]], everyone: list[str]) -> None:
    assert not groups["training"] & groups["validation"]
    assert not groups["training"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert set.union(*groups.values()) == set(everyone)


def test_split_patients_is_seeded_sized_and_order_free():
    names = [f"case{i:02d}" for i in range(20)]
    split = split_patients(names, (0.6, 0.2, 0.2), seed=0)
    assert [list(split.values()).count(s) for s in SPLITS] == [12, 4, 4]
    assert split_patients(names[::-1], (0.6, 0.2, 0.2), seed=0) == split
    assert split_patients(names, (0.6, 0.2, 0.2), seed=1) != split
    assert set(split_patients(names, (1, 0, 0), seed=0).values()) == {"training"}
    for bad in [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)]:
        with pytest.raises(ValueError, match="fractions"):
            split_patients(names, bad, seed=0)


def test_msd_3d_keeps_the_chosen_modality_grid_and_labels(tmp_path):
    src = make_msd(tmp_path / "Task01_BrainTumour")
    before = snapshot(src)
    datalist = msd_brain(str(src), str(tmp_path / "msd3d"), mode="3d", modality="T1GD", fractions=FRACTIONS)
    content = json.loads(Path(datalist).read_text())
    assert content["labels"] == MSD_LABELS and content["modality"] == "t1gd" and "classes" not in content
    for split in SPLITS:
        for case in load_cases(datalist, split, use_mask=True):
            name = stem(case["image"])
            source, source_label = (
                nib.load(src / "imagesTr" / f"{name}.nii.gz"),
                nib.load(src / "labelsTr" / f"{name}.nii.gz"),
            )
            image, label = nib.load(case["image"]), nib.load(case["label"])
            assert image.shape == label.shape == MSD_SHAPE and "class" not in case
            np.testing.assert_array_equal(image.get_fdata(), source.get_fdata()[..., 2])  # t1gd is channel 2
            np.testing.assert_array_equal(label.get_fdata(), source_label.get_fdata())
            np.testing.assert_allclose(image.affine, MSD_AFFINE)
            np.testing.assert_allclose(label.affine, MSD_AFFINE)
            assert label.get_data_dtype() == np.uint8
    assert_disjoint(splits_by_patient(datalist, stem), MSD_CASES)
    assert snapshot(src) == before


def test_msd_2d_slices_with_brain_and_tumour_classes(tmp_path):
    src = make_msd(tmp_path / "Task01_BrainTumour")
    datalist = msd_brain(str(src), str(tmp_path / "msd2d"), fractions=FRACTIONS, seed=3)
    content = json.loads(Path(datalist).read_text())
    assert content["classes"] == {"0": "no_tumour", "1": "tumour"} and content["modality"] == "FLAIR"
    slices: dict[str, list[int]] = {}
    for split in SPLITS:
        for case in load_cases(datalist, split, use_mask=True, num_classes=2):
            name, z = stem(case["image"]).rsplit("_z", 1)
            z = int(z)
            slices.setdefault(name, []).append(z)
            assert case["class"] == int(z in TUMOUR_Z)
            source = nib.load(src / "imagesTr" / f"{name}.nii.gz")
            image, label = nib.load(case["image"]), nib.load(case["label"])
            np.testing.assert_array_equal(image.get_fdata(), source.get_fdata()[:, :, z, 0])  # FLAIR is channel 0
            source_label = nib.load(src / "labelsTr" / f"{name}.nii.gz").get_fdata()[:, :, z]
            np.testing.assert_array_equal(label.get_fdata(), source_label)
            expected_affine = MSD_AFFINE.copy()
            expected_affine[2, 3] += z  # the slice keeps its position in scanner space
            np.testing.assert_allclose(image.affine, expected_affine)
            np.testing.assert_allclose(label.affine, expected_affine)
    assert slices == {name: BRAIN_Z for name in MSD_CASES}
    assert_disjoint(splits_by_patient(datalist, lambda p: stem(p).rsplit("_z", 1)[0]), MSD_CASES)
    # the files read through the project's own transforms as single-channel 2D cases
    case = load_cases(datalist, "training", use_mask=True, num_classes=2)[0]
    out = input_transforms((8, 8), num_labels=4, intensity_range=None)(case)
    assert out["image"].shape == out["label"].shape == (1, 8, 8)


def test_msd_errors_name_the_problem_and_leave_no_output(tmp_path):
    src = make_msd(tmp_path / "Task01_BrainTumour")
    out = tmp_path / "converted" / "msd"
    with pytest.raises(ValueError, match=r"unknown modality 'DWI'.*FLAIR"):
        msd_brain(str(src), str(out), modality="DWI")
    with pytest.raises(ValueError, match="mode"):
        msd_brain(str(src), str(out), mode="4d")
    with pytest.raises(ValueError, match="outside the source"):
        msd_brain(str(src), str(src / "converted"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        msd_brain(str(tmp_path / "empty"), str(out))
    (tmp_path / "no_json").mkdir()
    (tmp_path / "no_json" / "imagesTr").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        msd_brain(str(tmp_path / "no_json"), str(out))

    # a label on another grid, met after other cases were already written: nothing appears at out_dir
    _save(np.zeros((8, 8, 5), np.uint8), MSD_AFFINE, src / "labelsTr" / "BRATS_004.nii.gz")
    before = snapshot(src)
    with pytest.raises(ValueError, match=r"labelsTr/BRATS_004\.nii\.gz: label shape \(8, 8, 5\)"):
        msd_brain(str(src), str(out), mode="3d")
    assert not out.exists() and os.listdir(out.parent) == []  # no staging folder left behind
    assert snapshot(src) == before

    # an existing out_dir is kept: refused without overwrite, untouched when an overwriting run fails
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(FileExistsError, match="overwrite"):
        msd_brain(str(src), str(out), mode="3d")
    with pytest.raises(ValueError, match="BRATS_004"):
        msd_brain(str(src), str(out), mode="3d", overwrite=True)
    assert os.listdir(out) == ["keep.txt"] and os.listdir(out.parent) == ["msd"]


def test_camus_frames_classes_quality_and_official_split(tmp_path):
    src = make_camus(tmp_path / "CAMUS_public")
    before = snapshot(src)
    datalist = camus(str(src), str(tmp_path / "camus"), min_quality="Medium")
    content = json.loads(Path(datalist).read_text())
    assert content["labels"] == {"0": "background", "1": "lv_endocardium", "2": "lv_myocardium", "3": "left_atrium"}
    assert content["classes"] == {str(v): k for k, v in VIEW_PHASE_CLASS.items()}
    assert content["split"].startswith("official")
    names = []
    for split in SPLITS:
        for case in load_cases(datalist, split, use_mask=True, num_classes=4):
            name = stem(case["image"])
            patient, view, phase = name.split("_")
            names.append(name)
            assert patient in CAMUS_OFFICIAL[split]
            assert case["class"] == VIEW_PHASE_CLASS[f"{view}_{phase}"]
            folder = src / "database_nifti" / patient
            for key, suffix in (("image", ""), ("label", "_gt")):
                source, written = nib.load(folder / f"{name}{suffix}.nii.gz"), nib.load(case[key])
                assert written.shape == CAMUS_SHAPE
                np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))
                np.testing.assert_allclose(written.affine, CAMUS_AFFINE)
    # every ED/ES frame except the Poor 4CH view of patient0003 (the Medium 2CH view of patient0002 stays)
    expected = {f"{p}_{vp}" for p in CAMUS_PATIENTS for vp in VIEW_PHASE_CLASS} - {
        "patient0003_4CH_ED",
        "patient0003_4CH_ES",
    }
    assert sorted(names) == sorted(expected)
    case = load_cases(datalist, "test", use_mask=True, num_classes=4)[0]
    out = input_transforms((16, 16), num_labels=4, intensity_range=(0, 255))(case)
    assert out["image"].shape == (1, 16, 16) and set(out["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert snapshot(src) == before


def test_camus_split_by_patient_without_split_files_is_deterministic(tmp_path):
    src = make_camus(tmp_path / "CAMUS_public", split_files=False)
    first = camus(str(src), str(tmp_path / "a"), fractions=FRACTIONS, seed=0)
    second = camus(str(src), str(tmp_path / "b"), fractions=FRACTIONS, seed=0)
    other = camus(str(src), str(tmp_path / "c"), fractions=FRACTIONS, seed=1)
    lists = [{s: json.loads(Path(d).read_text())[s] for s in SPLITS} for d in (first, second, other)]
    assert lists[0] == lists[1] and lists[0] != lists[2]
    assert sum(len(v) for v in lists[0].values()) == 4 * len(CAMUS_PATIENTS)  # no quality filter: all frames
    assert json.loads(Path(first).read_text())["split"].startswith("by patient")
    assert_disjoint(splits_by_patient(first, lambda p: stem(p).split("_")[0]), CAMUS_PATIENTS)


def test_camus_errors_name_the_file(tmp_path):
    src = make_camus(tmp_path / "CAMUS_public")
    out = tmp_path / "camus"
    with pytest.raises(ValueError, match="min_quality"):
        camus(str(src), str(out), min_quality="Excellent")
    with pytest.raises(FileNotFoundError, match="database_nifti"):
        camus(str(src / "database_split"), str(out))

    gt = src / "database_nifti" / "patient0005" / "patient0005_4CH_ES_gt.nii.gz"
    _save(np.full(CAMUS_SHAPE, 5, np.uint8), CAMUS_AFFINE, gt)
    with pytest.raises(ValueError, match=r"patient0005_4CH_ES_gt\.nii\.gz: label values \[5\]"):
        camus(str(src), str(out))
    gt.unlink()
    with pytest.raises(FileNotFoundError, match=r"patient0005_4CH_ES_gt\.nii\.gz"):
        camus(str(src), str(out))
    assert not out.exists()

    _save(np.zeros(CAMUS_SHAPE, np.uint8), CAMUS_AFFINE, gt)
    (src / "database_split" / "subgroup_testing.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"patient0006.*none of the split files"):
        camus(str(src), str(out))
    assert not out.exists()


def test_cli_runs_both_converters(tmp_path):
    script = str(ROOT / "bundle" / "scripts" / "convert.py")
    msd, cam = make_msd(tmp_path / "Task01_BrainTumour"), make_camus(tmp_path / "CAMUS_public")
    runs = [
        [script, "msd_brain", "--src", str(msd), "--out_dir", str(tmp_path / "m"), "--mode", "3d"],
        [script, "camus", "--src", str(cam), "--out_dir", str(tmp_path / "c"), "--min_quality", "Good"],
    ]
    for args in runs:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "items written to" in done.stdout and "100%" in done.stderr  # summary line and progress bar
    assert len(load_cases(str(tmp_path / "m" / "datalist.json"), "training", use_mask=True)) == 5  # round(0.8 * 6)
    camus_items = sum(len(load_cases(str(tmp_path / "c" / "datalist.json"), s, num_classes=4)) for s in SPLITS)
    assert camus_items == 4 * len(CAMUS_PATIENTS) - 4  # Good only: drops patient0002 2CH and patient0003 4CH
    bad = subprocess.run(
        [sys.executable, script, "msd_brain", "--src", str(msd), "--out_dir", str(tmp_path / "x"), "--modality", "T3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "unknown modality 'T3'" in bad.stderr and not (tmp_path / "x").exists()
