"""DICOM inputs and a tiny bundle for the deploy app's tests and benchmark.

Series are written from the data_dir MNI152 volume (bundle/data/3d: a 2 mm T1 image and its tissue labels) with
the headers a real scanner writes, faults included (an invalid Patient's Sex, an over-long Study Description, an
empty Laterality, vendor private elements, an overlay): the app must copy none of those faults. Planes may be
oblique and unevenly spaced; the image is resampled onto them, so every fixture is a true picture of its geometry.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.ndimage import map_coordinates

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_VERSION = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())["version"]
BUNDLE = ROOT / "bundle"
SEGMENTS = (  # model label, segment label, property type
    (1, "Cerebrospinal fluid", codes.SCT.CerebrospinalFluid),
    (2, "Grey matter", codes.SCT.GrayMatter),
    (3, "White matter", codes.SCT.WhiteMatter),
)
TINY_UNET = {  # the network of the tests: the real structure (levels, attention, ControlNet), tiny
    "channels": [8, 16],
    "attention_levels": [False, True],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 4,
}


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


def write_enhanced(path: Path, source: list[Dataset]) -> Dataset:
    """Writes the series as one legacy converted enhanced MR object (per-frame geometry); returns it."""
    image = hd.legacy.LegacyConvertedEnhancedMRImage(conformant(source), generate_uid(), 5, generate_uid(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path)
    return image


def make_bundle(folder: Path, image_size=(32, 32), variant: str = "mask_class_2d", num_steps: int = 2) -> Path:
    """A bundle with a tiny, untrained network: the real configs and scripts, configs/deploy.json overrides for
    the tiny network, and models/model.pt. ``variant``: a file of bundle/configs/variants."""
    import sys

    sys.path.insert(0, str(BUNDLE))
    from scripts.checkpoint import ModelCard, save_model
    from scripts.networks import ConditionalUNet

    (folder / "configs").mkdir(parents=True)
    for name in ("inference.json", "metadata.json"):
        shutil.copy(BUNDLE / "configs" / name, folder / "configs" / name)
    (folder / "scripts").symlink_to(BUNDLE / "scripts")
    overrides = json.loads((BUNDLE / "configs" / "variants" / f"{variant}.json").read_text())
    overrides = {k: v for k, v in overrides.items() if k in ("variant", "num_labels", "num_classes")}
    overrides.update({"image_size": list(image_size), "unet": TINY_UNET, "num_steps": num_steps, "device": "cpu"})
    (folder / "configs" / "deploy.json").write_text(json.dumps(overrides, indent=1))
    torch.manual_seed(0)
    classes, labels = overrides.get("num_classes", 3), overrides.get("num_labels", 4)
    network = ConditionalUNet(len(image_size), num_classes=classes, num_labels=labels, **TINY_UNET)
    card = ModelCard("flow", network.config, image_size, [0.0, 900.0], overrides["variant"])
    save_model(str(folder / "models" / "model.pt"), network, None, card)
    return folder
