"""The deploy app's input side on real DICOM files: loading, planes and their geometry, SEG reading and label
mapping, task choice, series selection and the header rules of the output."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from monai.deploy.core import Fragment
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app import selection_rules, task_setting
from motfm_deploy.header import copy_valid, valid
from motfm_deploy.images import InputError, read_planes
from motfm_deploy.labels import LabelMap
from motfm_deploy.model import plane_tensor, to_planes
from motfm_deploy.report import Problem
from operators.seg_reader import SegReaderOperator
from operators.study_loader import StudyLoaderOperator
from testbed.studies import study_header, write_enhanced, write_file_set, write_mr_series, write_seg


def pydicom_file(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name, download=False))


@pytest.fixture(scope="module")
def study(tmp_path_factory, volumes) -> Path:
    """One MR study on disk: an axial series and a SEG of its tissues."""
    folder = tmp_path_factory.mktemp("study")
    source = write_mr_series(folder / "t1", volumes[0], study_header(), num_slices=4)
    write_seg(folder / "seg.dcm", source, volumes[1])
    return folder


def load(folder: Path):
    return StudyLoaderOperator(Fragment(), input_folder=folder, name="loader").load(folder)


def plan(folder: Path, task: str | None = None, label_map: LabelMap | None = None):
    """Loads a folder and plans its jobs, every series selected (as with no selection rules)."""
    studies, _ = load(folder)
    selections = DICOMSeriesSelectorOperator(Fragment(), name="selector").filter(None, studies)
    reader = SegReaderOperator(Fragment(), label_map=label_map or LabelMap.read(), task=task, name="reader")
    return [job for selection in selections for job in reader.plan(selection)]


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"]
)
def test_compressed_and_big_endian_files_decode_like_the_original(name):
    (plane,) = read_planes([pydicom_file(name)])
    (original,) = read_planes([pydicom_file("MR_small.dcm")])
    np.testing.assert_array_equal(plane.pixels(), original.pixels())
    np.testing.assert_allclose(plane.position, original.position)


def test_ct_planes_are_in_hounsfield_units():
    ds = pydicom_file("CT_small.dcm")
    (plane,) = read_planes([ds])
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(plane.pixels(), expected)
    assert plane.pixels().min() < -500  # air, in HU


def test_enhanced_multiframe_has_per_frame_geometry(tmp_path, volumes):
    """A legacy converted enhanced MR object gives the planes of the classic series it was made from."""
    classic = write_mr_series(tmp_path / "classic", volumes[0], study_header(), num_slices=4, tilt_degrees=10)
    enhanced = write_enhanced(tmp_path / "enhanced.dcm", classic)
    planes, frames = read_planes(classic), read_planes([enhanced])
    assert sorted(p.frame for p in frames) == [0, 1, 2, 3]
    for plane, frame in zip(planes, frames):
        np.testing.assert_allclose(frame.position, plane.position, atol=1e-4)
        np.testing.assert_allclose(frame.orientation, plane.orientation, atol=1e-6)
        np.testing.assert_array_equal(frame.pixels(), plane.pixels())


def test_oblique_uneven_stack_is_sorted_along_its_normal(tmp_path, volumes):
    gaps = [2.0, 3.5, 2.5]
    datasets = write_mr_series(tmp_path, volumes[0], study_header(), num_slices=4, tilt_degrees=25, gaps=gaps)
    planes = read_planes([pydicom.dcmread(p) for p in sorted(tmp_path.iterdir())])  # shuffled file names
    normal = planes[0].normal
    np.testing.assert_allclose(normal, [0, -np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))], atol=1e-6)
    offsets = [float(p.position @ normal) for p in planes]
    np.testing.assert_allclose(np.diff(offsets), gaps, atol=1e-3)
    assert [int(p.dataset.InstanceNumber) for p in planes] == [int(d.InstanceNumber) for d in datasets]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.5, 0.5, 0]), "not two orthogonal unit vectors"),
        (lambda ds: delattr(ds, "ImagePositionPatient"), "no valid ImagePositionPatient"),
        (lambda ds: setattr(ds, "PixelSpacing", [0, 0.3]), r"PixelSpacing \[0.0, 0.3\] is not positive"),
        (lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"), "only single-sample MONOCHROME2"),
        (lambda ds: delattr(ds, "PixelData"), "has no pixel data"),
    ],
)
def test_unusable_images_are_refused_naming_the_file(change, message):
    ds = pydicom_file("MR_small.dcm")
    change(ds)
    with pytest.raises(InputError, match=message) as excinfo:
        read_planes([ds])
    assert str(excinfo.value).startswith(ds.filename)


def test_non_image_sop_classes_are_refused():
    for name in ("reportsi.dcm", "SC_rgb_jpeg_gdcm.dcm", "rtdose.dcm"):
        with pytest.raises(InputError, match="is not a CT or MR image SOP class"):
            read_planes([pydicom_file(name)])


def test_plane_tensors_map_planes_onto_their_closest_patient_axes(tmp_path, volumes):
    """(rows, columns) <-> (1, columns, rows); an axial plane spans R and A, a sagittal one A and S."""
    (axial,) = read_planes([pydicom_file("MR_small.dcm")])
    array = axial.pixels()
    tensor = plane_tensor(axial, array)
    assert tuple(tensor.shape) == (1, array.shape[1], array.shape[0])
    np.testing.assert_array_equal(to_planes(tensor)[0], array)
    # columns run to the patient's left (R decreasing), rows to posterior (A decreasing)
    np.testing.assert_allclose(np.asarray(tensor.affine)[:2, :2], -np.diag(axial.spacing[::-1]))
    sagittal = copy.deepcopy(axial)
    sagittal.row_cosine, sagittal.column_cosine = np.array([0.0, 1, 0]), np.array([0.0, 0, -1])
    affine = np.asarray(plane_tensor(sagittal, array).affine)
    np.testing.assert_allclose(affine[:2, :2], [[-axial.spacing[1], 0], [0, -axial.spacing[0]]])  # A, S


def test_loader_keeps_good_files_and_names_bad_ones(tmp_path, study):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in study.rglob("*"):
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not DICOM")  # skipped with a warning only
    (folder / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)))
    data = (study / "seg.dcm").read_bytes()
    (folder / "IM_MARKER").write_bytes(data[:128] + b"DIcM" + data[132:])  # no .dcm name, but a zero preamble
    studies, failures = load(folder)
    assert len(studies) == 1 and len(studies[0].get_all_series()) == 2
    assert sum(len(s.get_sop_instances()) for s in studies[0].get_all_series()) == 5
    missing = "SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID"
    garbage, marker = str(folder / "garbage.dcm"), str(folder / "IM_MARKER")
    assert failures == [
        Problem([marker], f"{marker}: damaged DICOM file (no DICM marker at byte 128)"),
        Problem([garbage], f"{garbage}: not a usable DICOM instance (no {missing})"),
    ]


def test_every_file_that_fails_a_series_is_named(tmp_path, volumes):
    """A series with unusable files, the first of them first in the series (a SOP class that is no image, no pixel
    data): its job fails naming each with its reason, not the usable files; a file whose Study Instance UID
    differs from its series' makes a series of its own, in its own study, and is processed."""
    write_mr_series(tmp_path / "in", volumes[0], study_header(), num_slices=5)
    first, no_pixels, moved, *usable = map(pydicom.dcmread, sorted((tmp_path / "in").iterdir()))
    first.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.9"
    del no_pixels.PixelData
    moved.StudyInstanceUID = pydicom.uid.generate_uid()
    for ds in (first, no_pixels, moved):
        ds.save_as(ds.filename)
    failed, alone = sorted(plan(tmp_path / "in"), key=lambda job: job.error is None)
    assert failed.error == (
        f"{first.filename}: 1.2.840.10008.5.1.4.1.1.4.9 is not a CT or MR image SOP class this app reads; "
        f"{no_pixels.filename}: has no pixel data"
    )
    assert sorted(failed.files) == sorted(ds.filename for ds in (first, no_pixels, *usable))
    assert alone.error is None and [p.file for p in alone.planes] == [moved.filename]


def test_loader_skips_a_dicomdir_and_reads_the_files_it_indexes(tmp_path, study, caplog):
    """A File-set as on a patient's CD: its DICOMDIR is skipped with a warning naming it, its files are read."""
    dicomdir = write_file_set(sorted(p for p in study.rglob("*") if p.is_file()), tmp_path / "cd")
    with caplog.at_level(logging.WARNING):
        studies, failures = load(tmp_path / "cd")
    assert failures == []
    assert len(studies) == 1 and sum(len(s.get_sop_instances()) for s in studies[0].get_all_series()) == 5
    assert f"{dicomdir}: a DICOMDIR, skipped" in caplog.text


def test_loader_refuses_input_without_dicom(tmp_path):
    with pytest.raises(ValueError, match="holds no files"):
        load(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"no DICOM study in input folder {tmp_path}: .*readme.txt: not a DICOM"):
        load(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing")


def test_seg_gives_model_labels_on_its_source_planes(study, volumes):
    (job,) = plan(study)
    assert job.task == "synthesize" and job.error is None
    assert job.labels.shape == (4, *job.planes[0].shape)
    assert set(np.unique(job.labels)) == {0, 1, 2, 3}
    # the labels are the tissue map on each plane: compare with the label volume at the plane centres
    seg = hd.seg.Segmentation.from_dataset(job.seg)
    masks = seg.get_pixels_by_source_instance([p.dataset.SOPInstanceUID for p in job.planes], combine_segments=True)
    np.testing.assert_array_equal(job.labels, masks)  # segment numbers are the labels in this fixture


def test_task_choice(study, tmp_path):
    assert [j.task for j in plan(study)] == ["synthesize"]
    assert [(j.task, len(j.planes)) for j in plan(study, task="denoise")] == [("denoise", 4)]
    (study_without_seg := tmp_path / "mr").mkdir()
    for path in (study / "t1").iterdir():
        (study_without_seg / path.name).write_bytes(path.read_bytes())
    assert [j.task for j in plan(study_without_seg)] == ["denoise"]
    (job,) = plan(study_without_seg, task="synthesize")
    assert job.error.endswith("no DICOM SEG to synthesize from") and str(study_without_seg) in job.error
    assert sorted(job.files) == sorted(str(p) for p in study_without_seg.iterdir())  # its problem's files


def test_task_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("MOTFM_TASK", " Denoise ")
    assert task_setting() == "denoise"
    monkeypatch.setenv("MOTFM_TASK", "segment")
    with pytest.raises(ValueError, match="MOTFM_TASK must be one of"):
        task_setting()
    monkeypatch.delenv("MOTFM_TASK")
    assert task_setting() is None


def seg_variant(study: Path, folder: Path, volumes, change=None, **options) -> Path:
    """A copy of the study's series with a SEG written on a changed copy of its planes."""
    series = [pydicom.dcmread(p) for p in sorted((study / "t1").iterdir())]
    folder.mkdir()
    for ds in series:
        ds.save_as(folder / Path(ds.filename).name)
    if change is not None:
        series = [change(copy.deepcopy(ds)) for ds in series]
    write_seg(folder / "seg.dcm", series, volumes[1], **options)
    return folder


def test_seg_problems_are_clear_errors(study, tmp_path, volumes):
    def shift(ds):
        ds.ImagePositionPatient = [float(v) + (5 if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)]
        return ds

    (job,) = plan(seg_variant(study, tmp_path / "shifted", volumes, shift))
    assert job.error.startswith(f"{tmp_path / 'shifted' / 'seg.dcm'}: mismatched geometry: its frame")
    assert sorted(job.files) == sorted(str(p) for p in (tmp_path / "shifted").iterdir())  # the SEG and its source
    (job,) = plan(seg_variant(study, tmp_path / "empty", volumes, empty=True))
    assert job.error.startswith(f"{tmp_path / 'empty' / 'seg.dcm'}: its segments mapped to model labels are empty")
    liver = ((1, "Liver", codes.SCT.Liver),)
    (job,) = plan(seg_variant(study, tmp_path / "liver", volumes, segments=liver))
    assert "none of its segments maps to a model label: 'Liver' (SCT 10200004 Liver)" in job.error
    (missing := tmp_path / "missing").mkdir()
    (missing / "liver.dcm").write_bytes(Path(get_testdata_file("liver_1frame.dcm", download=False)).read_bytes())
    (job,) = plan(missing)
    assert job.error.startswith(f"{missing / 'liver.dcm'}: its source series") and "is not in the input" in job.error
    assert job.files == [str(missing / "liver.dcm")]


def test_segments_map_by_code_else_by_label(study, tmp_path, volumes):
    """Labels match case-insensitively with '_' read as space; a listed code wins over the label."""
    segments = (
        (1, "CSF", codes.SCT.Tissue),
        (2, "Grey_Matter", codes.SCT.Tissue),
        (3, "grey matter", codes.SCT.WhiteMatter),  # its code says white matter
    )
    (job,) = plan(seg_variant(study, tmp_path / "labels", volumes, segments=segments))
    assert job.error is None and set(np.unique(job.labels)) == {0, 1, 2, 3}
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"labels": [{"label": 3, "segment_labels": ["csf"]}]}))
    custom = seg_variant(study, tmp_path / "custom", volumes, segments=segments)
    (job,) = plan(custom, label_map=LabelMap.read(label_map))
    assert set(np.unique(job.labels)) == {0, 3}
    label_map.write_text(json.dumps({"labels": [{"label": "one"}]}))
    with pytest.raises(ValueError, match=f"label map {label_map} cannot be used"):
        LabelMap.read(label_map)


def test_selection_rules_choose_series(study, tmp_path, monkeypatch, volumes):
    """Rules in the SDK selector's format, from the file MOTFM_SELECTION_RULES names."""
    write_mr_series(tmp_path / "in" / "a", volumes[0], study_header(), num_slices=2, description="t1 axial")
    write_mr_series(tmp_path / "in" / "b", volumes[0], study_header(), num_slices=2, description="localizer")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"selections": [{"name": "T1", "conditions": {"SeriesDescription": "(?i)^t1"}}]}))
    monkeypatch.setenv("MOTFM_SELECTION_RULES", str(rules))
    studies, _ = load(tmp_path / "in")
    selector = DICOMSeriesSelectorOperator(Fragment(), rules=selection_rules(), all_matched=True, name="selector")
    selections = selector.filter(json.loads(selection_rules()), studies, all_matched=True)
    chosen = [s.series.SeriesDescription for selection in selections for s in selection.selected_series]
    assert chosen == ["t1 axial"]
    rules.write_text(json.dumps({"rules": []}))
    with pytest.raises(ValueError, match=f'selection rules {rules} .*no "selections"'):
        selection_rules()


def element(keyword: str, value) -> DataElement:
    ds = Dataset()
    setattr(ds, keyword, value)
    return ds[keyword]


@pytest.mark.parametrize(
    "keyword, value, ok",
    [
        ("StudyDate", "20240131", True),
        ("StudyDate", "2024-01-31", False),
        ("PatientSex", "M", True),
        ("PatientSex", "MALE", False),
        ("StudyDescription", "x" * 64, True),
        ("StudyDescription", "x" * 65, False),
        ("PatientName", "A^B^C^D^E", True),
        ("PatientName", "A^B^C^D^E^F", False),
        ("ScanningSequence", ["GR", "IR"], True),
        ("ScanningSequence", ["GR", "XX"], False),
        ("SliceThickness", "2.000000000000000001", False),
        ("PatientPosition", "HFS", True),
        ("PatientPosition", "", False),
    ],
)
def test_only_valid_values_are_copied(keyword, value, ok):
    assert valid(element(keyword, value)) is ok
    target = Dataset()
    copy_valid(Dataset({element(keyword, value).tag: element(keyword, value)}), target, [(keyword, True)])
    assert target[keyword].value == (element(keyword, value).value if ok else None)
