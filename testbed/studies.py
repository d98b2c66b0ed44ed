"""DICOM studies for the deploy app and the node, written from a synthetic subject's volume (bundle/data/3d: a 2 mm
T1 image and its tissue labels) with the headers a real scanner writes, faults included (an invalid Patient's Sex,
an over-long Study Description, an empty Laterality, vendor private elements, an overlay): the app must copy none
of those faults. Planes may be oblique and unevenly spaced; the image is resampled onto them, so every study is a
true picture of its geometry.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.ndimage import map_coordinates

SEGMENTS = (  # model label, segment label, property type
    (1, "Cerebrospinal fluid", codes.SCT.CerebrospinalFluid),
    (2, "Grey matter", codes.SCT.GrayMatter),
    (3, "White matter", codes.SCT.WhiteMatter),
)


def stack_geometry(
    num_slices: int, centre: Sequence[float], tilt_degrees: float = 0.0, spacing: float = 2.0, gaps=None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, 3) of the centres of an axial stack tilted about the patient's left-right axis, and its
    orientation (6,). ``gaps`` (n - 1,) overrides the even ``spacing`` between slices (mm)."""
    angle = np.deg2rad(tilt_degrees)
    row, column = np.array([1.0, 0, 0]), np.array([0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, column)
    steps = np.concatenate([[0.0], np.cumsum(gaps if gaps is not None else [spacing] * (num_slices - 1))])
    steps -= steps.mean()
    return np.asarray(centre) + steps[:, None] * normal, np.concatenate([row, column])


def resample(volume: nib.Nifti1Image, centres: np.ndarray, orientation: np.ndarray, shape, spacing, order: int):
    """Samples a NIfTI volume on planes (LPS) centred at ``centres``; returns (n, rows, cols) and positions (n, 3)."""
    rows, cols = shape
    row, column = orientation[:3], orientation[3:]
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    positions = centres - row * spacing * (cols - 1) / 2 - column * spacing * (rows - 1) / 2
    inverse = np.linalg.inv(volume.affine)
    data = np.asarray(volume.dataobj, dtype=np.float32)
    out = []
    for position in positions:
        lps = position + (c[..., None] * row + r[..., None] * column) * spacing
        ras = lps * np.array([-1.0, -1.0, 1.0])
        index = ras @ inverse[:3, :3].T + inverse[:3, 3]
        out.append(map_coordinates(data, index.transpose(2, 0, 1), order=order, mode="constant"))
    return np.stack(out), positions


def _header(study: Dataset, series_uid: str, description: str) -> Dataset:
    """A Siemens-like MR header (ISO_IR 100, vendor private elements, an invalid value or two)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    ds.SOPClassUID = MRImageStorage
    for elem in study:
        ds[elem.tag] = elem
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.StudyDate
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101530.250000"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "MR", "SIEMENS", "Skyra"
    ds.InstitutionName, ds.StationName, ds.OperatorsName = "Test Hospital", "AWP45123", "Tech^One"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "45123", "syngo MR E11"
    ds.SeriesDescription, ds.ProtocolName = description, "t1_mprage_tra"
    ds.BodyPartExamined, ds.Laterality = "HEAD", ""
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = ["GR", "IR"], ["SP", "MP"], "IR"
    ds.MRAcquisitionType, ds.SequenceName, ds.AngioFlag = "3D", "*tfl3d1_16ns", "N"
    ds.RepetitionTime, ds.EchoTime, ds.InversionTime = "2300", "2.98", "900"
    ds.NumberOfAverages, ds.ImagingFrequency, ds.ImagedNucleus = "1", "123.2", "1H"
    ds.EchoNumbers, ds.MagneticFieldStrength, ds.EchoTrainLength, ds.FlipAngle = "1", "3", "1", "9"
    ds.PatientPosition, ds.PatientAge, ds.PatientWeight = "HFS", "054Y", "80"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.AcquisitionNumber = series_uid, "3", "1"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "400", "800"
    ds.RequestAttributesSequence = [Dataset()]
    ds.RequestAttributesSequence[0].RequestedProcedureID = "RP1"
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", b"SV10\x04\x03\x02\x01" * 4)
    ds.add_new(0x60003000, "OW", np.zeros(8, np.uint16).tobytes())  # overlay data without its group
    return ds


def study_header(patient: str = "Müller^Hans", invalid: bool = True) -> Dataset:
    """Patient and study attributes shared by the series of one study; ``invalid`` adds scanner-style faults."""
    ds = Dataset()
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240131", "101500", "ACC0042", "7"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "PAT-0042", "19700214"
    ds.PatientSex = "MALE" if invalid else "M"
    ds.StudyDescription = ("BRAIN^ROUTINE " * 6) if invalid else "BRAIN^ROUTINE"
    ds.ReferringPhysicianName = "Doe^Jane"
    return ds


def write_mr_series(
    folder: Path,
    volume: nib.Nifti1Image,
    study: Dataset,
    num_slices: int = 6,
    tilt_degrees: float = 0.0,
    gaps=None,
    shape=(48, 40),
    spacing: float = 3.0,
    centre=(0.0, 18.0, 10.0),
    description: str = "t1_mprage_tra",
) -> list[Dataset]:
    """Writes an MR series (one file per slice, shuffled names) sampled from ``volume``; returns its datasets.
    ``spacing`` is the pixel spacing and, unless ``gaps`` (n - 1,) are given, the distance between slices (mm)."""
    centres, orientation = stack_geometry(num_slices, centre, tilt_degrees, spacing, gaps)
    pixels, positions = resample(volume, centres, orientation, shape, spacing, order=1)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, datasets = generate_uid(), []
    for k, (image, position) in enumerate(zip(pixels, positions)):
        ds = _header(study, series_uid, description)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.Rows, ds.Columns = image.shape
        ds.PixelSpacing, ds.SliceThickness = [f"{spacing:g}", f"{spacing:g}"], f"{spacing:g}"
        ds.PixelData = np.clip(np.rint(image), 0, 4095).astype(np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            MRImageStorage,
            ds.SOPInstanceUID,
        )
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM_{(k * 7919) % 10007:05d}"
        ds.save_as(path, enforce_file_format=True)
        datasets.append(ds)
        ds.filename = str(path)
    return datasets


def conformant(source: list[Dataset]) -> list[Dataset]:
    """Copies with a valid Patient's Sex: highdicom refuses the invalid value the scanner wrote, as tools do."""
    source = [copy.deepcopy(ds) for ds in source]
    for ds in source:
        ds.PatientSex = ds.PatientSex if ds.PatientSex in ("M", "F", "O") else "O"
    return source


def write_seg(
    path: Path, source: list[Dataset], labels: nib.Nifti1Image, segments=SEGMENTS, empty: bool = False
) -> Dataset:
    """Writes a binary DICOM SEG (highdicom) of ``labels`` on the source series' planes; returns it."""
    source = conformant(source)
    first = source[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    spacing = float(first.PixelSpacing[0])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in source])
    rows, cols = int(first.Rows), int(first.Columns)
    centres = positions + orientation[:3] * spacing * (cols - 1) / 2 + orientation[3:] * spacing * (rows - 1) / 2
    label_map = resample(labels, centres, orientation, (rows, cols), spacing, order=0)[0].astype(np.uint8)
    masks = np.stack([(label_map == value) & (not empty) for value, _, _ in segments], axis=-1)
    descriptions = [
        hd.seg.SegmentDescription(n + 1, name, codes.SCT.Tissue, code, hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, (_, name, code) in enumerate(segments)
    ]
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=masks.astype(np.uint8),
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Seg Tool",
        manufacturer_model_name="Editor",
        software_versions="1.0",
        device_serial_number="1",
        omit_empty_frames=not empty,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    seg.filename = str(path)
    return seg


def write_file_set(files: Sequence[Path], folder: Path) -> Path:
    """The files as a DICOM File-set in ``folder``, as on a CD a patient brings: copied to PT*/ST*/SE*/IM* and
    indexed by a DICOMDIR (pydicom's ``FileSet``); returns the DICOMDIR's path."""
    file_set = FileSet()
    for file in files:
        file_set.add(file)
    file_set.write(folder)
    return folder / "DICOMDIR"


def write_enhanced(path: Path, source: list[Dataset]) -> Dataset:
    """Writes the series as one legacy converted enhanced MR object (per-frame geometry); returns it."""
    image = hd.legacy.LegacyConvertedEnhancedMRImage(conformant(source), generate_uid(), 5, generate_uid(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path)
    return image


@dataclass
class Study:
    """A study written to disk: its UID, files, series UIDs, and whether it has a SEG (synthesis) or not."""

    uid: str
    files: list[Path]
    series: set[str]
    slices: int
    has_seg: bool


def load_volumes(data_dir: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A test subject's T1 volume and its tissue labels (bundle/scripts/synthetic_subjects.py; the bundle's folder
    must be on sys.path)."""
    from scripts.synthetic_subjects import subject_volume

    return subject_volume(str(data_dir))


def write_study(folder: Path, volumes: tuple[nib.Nifti1Image, nib.Nifti1Image], seg: bool, slices: int = 4) -> Study:
    """A small MR study (``slices`` planes of 32 x 32, 6 mm) from ``volumes``, with a SEG of its tissues if ``seg``:
    the app then synthesizes, else it denoises."""
    source = write_mr_series(folder / "mr", volumes[0], study_header(), slices, shape=(32, 32), spacing=6.0)
    series = {source[0].SeriesInstanceUID}
    if seg:
        series.add(write_seg(folder / "seg.dcm", source, volumes[1]).SeriesInstanceUID)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return Study(source[0].StudyInstanceUID, files, series, slices, seg)
