"""End to end: the real Holoscan application (``python deploy_app``) on real DICOM files, both tasks and bad input.

Each run is one subprocess; its output is checked attribute by attribute against its source, round-tripped back to a
volume, and validated with dciodvfy (dicom3tools).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from motfm_deploy.images import read_planes
from testbed.app import dciodvfy_errors, digests, output_series, run_app
from testbed.bundles import BUNDLE_VERSION
from testbed.damage import DETECTABLE, damage, elements
from testbed.studies import study_header, write_enhanced, write_file_set, write_mr_series, write_seg

# every attribute a synthesized MR image from the fixture series has: nothing else may be carried over
SYNTHESIZED_MR = set(
    """
    SpecificCharacterSet ImageType InstanceCreationDate InstanceCreationTime SOPClassUID SOPInstanceUID
    SyntheticData StudyDate SeriesDate ContentDate StudyTime SeriesTime ContentTime AccessionNumber Modality
    Manufacturer ReferringPhysicianName SeriesDescription ManufacturerModelName ReferencedSeriesSequence
    ReferencedImageSequence DerivationDescription SourceImageSequence PatientName PatientID PatientBirthDate
    PatientSex BodyPartExamined ScanningSequence SequenceVariant ScanOptions MRAcquisitionType SliceThickness
    RepetitionTime EchoTime EchoTrainLength SoftwareVersions PatientPosition ContributingEquipmentSequence
    StudyInstanceUID SeriesInstanceUID StudyID SeriesNumber InstanceNumber ImagePositionPatient
    ImageOrientationPatient FrameOfReferenceUID PositionReferenceIndicator SamplesPerPixel PhotometricInterpretation
    Rows Columns PixelSpacing BitsAllocated BitsStored HighBit PixelRepresentation WindowCenter WindowWidth
    PixelData
    """.split()
)
# kept from the fixture's source as they are
KEPT = (
    "StudyInstanceUID PatientName PatientID PatientBirthDate StudyDate StudyTime AccessionNumber StudyID "
    "ReferringPhysicianName FrameOfReferenceUID PatientPosition BodyPartExamined"
).split()
# what the writer may write for any source: the above, the acquisition attributes it copies, CT's rescale
WRITABLE = SYNTHESIZED_MR | set(
    "IssuerOfPatientID StudyDescription Laterality InversionTime MagneticFieldStrength KVP AcquisitionNumber "
    "RescaleIntercept RescaleSlope LossyImageCompression LossyImageCompressionRatio LossyImageCompressionMethod".split()
)


def run_report(output: Path) -> dict:
    """The run report the app wrote into its output folder (nothing else is there but the series)."""
    assert sorted(p.name for p in output.iterdir() if not p.is_dir()) == ["motfm_run.json"]
    return json.loads((output / "motfm_run.json").read_text())


def floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])


@pytest.fixture(scope="module")
def synthesis(tmp_path_factory, volumes, model) -> SimpleNamespace:
    """An MR study with a DICOM SEG of its tissues: the app synthesizes (chosen from the input)."""
    base = tmp_path_factory.mktemp("synthesis")
    source = write_mr_series(base / "in" / "t1", volumes[0], study_header(), num_slices=8)
    seg = write_seg(base / "in" / "seg" / "seg.dcm", source, volumes[1])
    before = digests(base / "in")
    result = run_app(["-i", str(base / "in"), "-o", str(base / "out"), "-m", str(model / "motfm")])
    return SimpleNamespace(base=base, source=source, seg=seg, before=before, result=result)


def test_synthesis_writes_one_complete_series(synthesis):
    assert synthesis.result.returncode == 0, synthesis.result.stderr[-3000:]
    (series,) = output_series(synthesis.base / "out").values()
    assert len(series) == len(synthesis.source)
    uid = series[0].SeriesInstanceUID
    assert [p.name for p in (synthesis.base / "out").iterdir() if p.is_dir()] == [uid]
    assert digests(synthesis.base / "in") == synthesis.before  # inputs untouched
    report = run_report(synthesis.base / "out")
    assert (report["exit_status"], report["error"], report["problems"]) == (0, None, [])
    (written,) = report["series"]
    assert written["series_instance_uid"] == uid and written["study_instance_uid"] == series[0].StudyInstanceUID
    assert (written["task"], written["instances"]) == ("synthesize", len(series))
    assert Path(written["path"]) == synthesis.base / "out" / uid and str(synthesis.seg.filename) in written["source"]


def test_synthesis_attributes(synthesis):
    """Attribute by attribute against the source: same patient and study, new series, derived, synthetic, the
    model as equipment, references to the SEG and to the source planes, the source planes' geometry, and no
    attribute the output does not need (the fixture's invalid values and vendor elements stay behind)."""
    by_uid = {ds.SOPInstanceUID: ds for ds in synthesis.source}
    seg, (series,) = synthesis.seg, output_series(synthesis.base / "out").values()
    positions = []
    for number, ds in enumerate(series, 1):
        src = by_uid[ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert set(ds.dir()) == SYNTHESIZED_MR and not any(elem.tag.is_private for elem in ds)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
        for keyword in KEPT:
            assert ds[keyword].value == src[keyword].value, keyword
        assert str(ds.PatientName) == "Müller^Hans"
        assert ds.PatientSex == ""  # the source's "MALE" is not a valid value: written empty (type 2)
        assert ds.SeriesInstanceUID not in (src.SeriesInstanceUID, seg.SeriesInstanceUID)
        assert ds.SOPInstanceUID not in by_uid and ds.SeriesNumber == 1003
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"] and ds.SyntheticData == "YES"
        assert ds.SeriesDescription.startswith("SYNTHETIC - NOT ACQUIRED")
        assert seg.SOPInstanceUID in ds.DerivationDescription and "not acquired" in ds.DerivationDescription
        assert "axial level classes [0, 1, 2]" in ds.DerivationDescription
        assert ds.ManufacturerModelName == "MOTFM brain MR synthesis" and ds.SoftwareVersions == BUNDLE_VERSION
        equipment = ds.ContributingEquipmentSequence[0]
        assert equipment.ManufacturerModelName == ds.ManufacturerModelName
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"  # Synthesizing Equipment
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        referenced = {item.SeriesInstanceUID for item in ds.ReferencedSeriesSequence}
        assert referenced == {src.SeriesInstanceUID, seg.SeriesInstanceUID}
        assert (ds.ScanningSequence, ds.SequenceVariant) == ("RM", "NONE")  # not acquired: research mode
        assert ds.RepetitionTime is None and "InversionTime" not in ds
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            np.testing.assert_allclose(floats(ds[keyword].value), floats(src[keyword].value), atol=1e-4)
        assert (ds.Rows, ds.Columns, ds.InstanceNumber) == (src.Rows, src.Columns, number)
        assert np.ptp(ds.pixel_array) > 0
        positions.append(floats(ds.ImagePositionPatient)[2])
    assert positions == sorted(positions)  # instance numbers follow the stack


def test_synthesis_geometry_round_trips(synthesis):
    """The output series read back as a volume has the source series' grid."""
    from monai.transforms import LoadImage

    load = LoadImage(reader="PydicomReader", image_only=True)
    source = load(str(synthesis.base / "in" / "t1"))
    (folder,) = [p for p in (synthesis.base / "out").iterdir() if p.is_dir()]
    output = load(str(folder))
    assert output.shape == source.shape
    np.testing.assert_allclose(np.asarray(output.affine), np.asarray(source.affine), atol=1e-4)


def test_synthesis_passes_dciodvfy(synthesis):
    for path in sorted((synthesis.base / "out").rglob("*.dcm")):
        assert dciodvfy_errors(path) == [], path


@pytest.fixture(scope="module")
def denoising(tmp_path_factory, volumes, model) -> SimpleNamespace:
    """Real-world image series, forced to denoising through the environment (a SEG present is ignored): an oblique,
    unevenly spaced MR series, a legacy converted enhanced MR object, and pydicom's CT (uncompressed), oblique CT
    (JPEG 2000) and MR (JPEG-LS) files. Paths come from the HOLOSCAN_* variables."""
    base = tmp_path_factory.mktemp("denoising")
    study = study_header(patient="Doe^John", invalid=False)
    oblique = write_mr_series(
        base / "in" / "oblique", volumes[0], study, num_slices=5, tilt_degrees=20, gaps=[2, 3, 2.5, 4]
    )
    write_seg(base / "in" / "seg.dcm", oblique, volumes[1])
    axial = write_mr_series(base / "classic", volumes[0], study, num_slices=4, description="t1 axial")
    enhanced = write_enhanced(base / "in" / "enhanced.dcm", axial)
    enhanced.filename = str(base / "in" / "enhanced.dcm")
    files = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "MR_small_jpeg_ls_lossless.dcm")
    for name in files:
        shutil.copy(get_testdata_file(name, download=False), base / "in" / name)
    sources = {ds.SeriesInstanceUID: [ds] for ds in (pydicom.dcmread(base / "in" / n) for n in files)}
    sources.update({oblique[0].SeriesInstanceUID: oblique, enhanced.SeriesInstanceUID: [enhanced]})
    env = {
        "HOLOSCAN_INPUT_PATH": str(base / "in"),
        "HOLOSCAN_OUTPUT_PATH": str(base / "out"),
        "HOLOSCAN_MODEL_PATH": str(model),
        "MOTFM_TASK": "denoise",
        "MOTFM_RUN_REPORT": str(base / "report.json"),
    }
    return SimpleNamespace(base=base, sources=sources, result=run_app([], env))


def test_denoising_keeps_geometry_and_units(denoising):
    """One series per source image series, each plane on its source plane (per-frame geometry of the enhanced
    object, oblique and uneven stacks), values in the source's units (HU for CT) and close to the source."""
    assert denoising.result.returncode == 0, denoising.result.stderr[-3000:]
    outputs = output_series(denoising.base / "out")
    assert len(outputs) == len(denoising.sources) == 5
    report = json.loads((denoising.base / "report.json").read_text())  # where MOTFM_RUN_REPORT says
    assert sorted(s["series_instance_uid"] for s in report["series"]) == sorted(outputs)
    assert {s["task"] for s in report["series"]} == {"denoise"} and report["exit_status"] == 0
    assert not (denoising.base / "out" / "motfm_run.json").exists()
    for series in outputs.values():
        source_uid = series[0].ReferencedSeriesSequence[0].SeriesInstanceUID
        planes = read_planes(denoising.sources[source_uid])
        assert len(series) == len(planes)
        for ds, plane in zip(series, planes):
            reference = ds.SourceImageSequence[0]
            assert reference.ReferencedSOPInstanceUID == plane.dataset.SOPInstanceUID
            assert reference.get("ReferencedFrameNumber") == (None if plane.frame is None else plane.frame + 1)
            assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
            np.testing.assert_allclose(floats(ds.ImagePositionPatient), plane.position, atol=1e-3)
            np.testing.assert_allclose(floats(ds.ImageOrientationPatient), plane.orientation, atol=1e-6)
            np.testing.assert_allclose(floats(ds.PixelSpacing), plane.spacing, atol=1e-6)
            source = plane.pixels()
            output = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            assert output.shape == source.shape
            lo, hi = np.percentile(source, [0.5, 99.5])
            assert abs(output.mean() - np.clip(source, lo, hi).mean()) < 0.05 * (hi - lo)
            assert np.corrcoef(output.ravel(), source.ravel())[0, 1] > 0.8
        first, src = series[0], planes[0].dataset
        assert first.SOPClassUID == (CTImageStorage if src.Modality == "CT" else MRImageStorage)
        assert "SyntheticData" not in first and first.SeriesDescription.startswith("AI DENOISED (MOTFM)")
        assert set(first.dir()) <= WRITABLE and not any(elem.tag.is_private for elem in first)
        assert first.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        if src.Modality == "CT":
            assert (first.RescaleSlope, first.RescaleIntercept, first.KVP) == (1, 0, src.KVP)
        elif "ScanningSequence" in src:  # classic MR: the acquisition attributes are the source's
            assert first.ScanningSequence == src.ScanningSequence and first.EchoTime == src.EchoTime


def test_denoising_passes_dciodvfy(denoising):
    for path in sorted((denoising.base / "out").rglob("*.dcm")):
        assert dciodvfy_errors(path) == [], path


def test_bad_input_is_reported_and_loses_nothing(tmp_path, volumes, model):
    """A run with a good study among bad input: every problem is reported naming its file and ends the run in
    error, the good study's series is still written (whole), nothing partial is left, and no input changes. The
    good study comes as a File-set (as on a CD): its DICOMDIR is skipped with a warning, its files are read. The
    run report lists the series and each problem with its files."""
    inputs = tmp_path / "in"
    good = write_mr_series(tmp_path / "good", volumes[0], study_header(), num_slices=3)
    write_seg(tmp_path / "good" / "seg.dcm", good, volumes[1])
    dicomdir = write_file_set(sorted((tmp_path / "good").rglob("*")), inputs / "cd")
    data = {name: get_testdata_file(name, download=False) for name in ("liver_1frame.dcm", "MR_truncated.dcm")}
    data["reportsi.dcm"] = get_testdata_file("reportsi.dcm", download=False)  # a study with only a report
    for name, path in data.items():
        shutil.copy(path, inputs / name)
    (inputs / "README.txt").write_text("exported by a PACS\n")
    ct = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    (inputs / "cut_ct.dcm").write_bytes(ct[: ct.rindex(b"\xe0\x7f\x10\x00")])  # a transfer cut before the pixels
    (inputs / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 3)
    before = digests(inputs)
    result = run_app(["-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model)])
    log = result.stdout + result.stderr
    assert result.returncode == 1
    assert "5 input problems (1 series written)" in log
    assert f"{inputs / 'liver_1frame.dcm'}: its source series" in log and "is not in the input" in log
    assert f"{inputs / 'MR_truncated.dcm'}: cannot decode its pixel data" in log
    assert f"{inputs / 'cut_ct.dcm'}: has no pixel data" in log
    assert f"{inputs / 'garbage.dcm'}: not a usable DICOM instance" in log
    assert "has no CT or MR image series to denoise" in log and str(inputs / "reportsi.dcm") in log
    assert f"{inputs / 'README.txt'}: not a DICOM file, skipped" in log
    assert f"{dicomdir}: a DICOMDIR, skipped" in log
    (series,) = output_series(tmp_path / "out").values()
    assert len(series) == 3 and series[0].SyntheticData == "YES"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.is_dir()] == [series[0].SeriesInstanceUID]  # no staging
    assert digests(inputs) == before
    report = run_report(tmp_path / "out")
    assert report["exit_status"] == 1 and report["error"].startswith("5 input problems (1 series written):")
    assert [s["series_instance_uid"] for s in report["series"]] == [series[0].SeriesInstanceUID]
    problems = {Path(p["files"][0]).name: p for p in report["problems"]}
    assert sorted(problems) == ["MR_truncated.dcm", "cut_ct.dcm", "garbage.dcm", "liver_1frame.dcm", "reportsi.dcm"]
    for name, problem in problems.items():
        assert problem["files"] == [str(inputs / name)] and str(inputs / name) in problem["message"]


def test_damaged_files_are_skipped_and_named_and_the_intact_series_is_written_whole(tmp_path, volumes, model):
    """A study with an intact MR series and a second series made from it whose every file is damaged (seeded): the
    file meta element (0002,0002) read with the value representation 0x55 0xd5 (the file that ended a run before),
    and one file of each kind that always breaks a file (a flipped bit in the DICM marker, an unknown VR in the file
    meta or the data set, the file meta cut short, a length past the end of the file, the pixels cut short). The
    intact series is denoised whole; each damaged file is skipped and named with its reason in the log and the run
    report; the inputs stay as they were."""
    inputs, study = tmp_path / "in", study_header()
    intact = write_mr_series(inputs / "intact", volumes[0], study, 4, shape=(32, 32), spacing=6.0)
    kinds = ("issue", *DETECTABLE)
    source = write_mr_series(tmp_path / "source", volumes[0], study, len(kinds), shape=(32, 32), spacing=6.0)
    rng = np.random.default_rng(35)
    damaged = []
    for kind, ds in zip(kinds, source):
        data = Path(ds.filename).read_bytes()
        if kind == "issue":
            (sop_class,) = [e for e in elements(data)[0] if data[e.start : e.start + 4] == b"\x02\x00\x02\x00"]
            data = data[: sop_class.start + 4] + b"\x55\xd5" + data[sop_class.start + 6 :]
        else:
            data = damage(data, kind, rng)
        damaged.append(inputs / "damaged" / f"{kind}.dcm")
        damaged[-1].parent.mkdir(parents=True, exist_ok=True)
        damaged[-1].write_bytes(data)
    before = digests(inputs)
    result = run_app(["-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model)])
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert f"{len(kinds)} input problems (1 series written)" in log
    (series,) = output_series(tmp_path / "out").values()
    assert len(series) == len(intact)
    assert {s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in series} == {ds.SOPInstanceUID for ds in intact}
    report = run_report(tmp_path / "out")
    assert [s["instances"] for s in report["series"]] == [len(intact)]
    problems = {p["files"][0]: p["message"] for p in report["problems"]}
    assert sorted(problems) == sorted(map(str, damaged))
    assert "Unknown Value Representation '0x55 0xd5' in tag (0002,0002)" in problems[str(damaged[0])]
    for path, message in problems.items():
        assert message.startswith(f"{path}: ") and message in log
    assert digests(inputs) == before


def test_empty_input_is_an_error(tmp_path, model):
    (tmp_path / "in").mkdir()
    result = run_app(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model)])
    assert result.returncode == 1
    error = f"no DICOM study in input folder {tmp_path / 'in'}: {tmp_path / 'in'} holds no files"
    assert error in result.stderr
    report = run_report(tmp_path / "out")  # and nothing else
    assert report == {"exit_status": 1, "error": error, "series": [], "problems": []}
