"""The DICOM instances of an output series: a classic CT or MR image series derived from its source series.

Each instance keeps the source's Patient, Study and Frame of Reference and its source plane's geometry, and gets
new Series and SOP Instance UIDs, ImageType DERIVED\\SECONDARY, a DerivationDescription, references to its
sources, Synthetic Data YES when synthesized, and the model's name and version as the equipment. Only the
attributes the output needs are copied from the source, and only values valid for their VR (and enumerated
values); an invalid type 2 attribute is written empty, any other is left out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

import numpy as np
from pydicom import config
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat, validate_value

from .images import MODALITIES, Plane
from .jobs import Job

logger = logging.getLogger(__name__)

MANUFACTURER = "MOTFM project"
SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
IMAGE_TYPE_3 = {"CT": "AXIAL", "MR": "OTHER"}  # value 3, required by the CT and MR Image modules
DESCRIPTIONS = {"synthesize": "SYNTHETIC - NOT ACQUIRED (MOTFM)", "denoise": "AI DENOISED (MOTFM)"}
PURPOSES = {"synthesize": codes.DCM.SynthesizingEquipment, "denoise": codes.DCM.ProcessingEquipment}
SERIES_NUMBER_OFFSET = 1000

# patient, study, series and image attributes copied from the source series when valid:
# (keyword, type 2: written empty when the source has no valid value)
FROM_SOURCE = (
    ("PatientName", True),
    ("PatientID", True),
    ("IssuerOfPatientID", False),
    ("PatientBirthDate", True),
    ("PatientSex", True),
    ("StudyDate", True),
    ("StudyTime", True),
    ("ReferringPhysicianName", True),
    ("StudyID", True),
    ("AccessionNumber", True),
    ("StudyDescription", False),
    ("PatientPosition", True),
    ("BodyPartExamined", False),
    ("Laterality", False),
    ("PositionReferenceIndicator", True),
    ("LossyImageCompression", False),
    ("LossyImageCompressionRatio", False),
    ("LossyImageCompressionMethod", False),
)
# acquisition attributes the CT and MR Image modules require, copied for denoised images (synthesized images
# were not acquired: type 2 ones are empty and MR's type 1 Scanning Sequence / Sequence Variant say RM / NONE)
ACQUISITION = {
    "CT": (("KVP", True), ("AcquisitionNumber", True)),
    "MR": (
        ("ScanningSequence", False),
        ("SequenceVariant", False),
        ("ScanOptions", True),
        ("MRAcquisitionType", True),
        ("RepetitionTime", True),
        ("EchoTime", True),
        ("EchoTrainLength", True),
        ("InversionTime", False),
        ("MagneticFieldStrength", False),
    ),
}
MR_DEFAULTS = {"ScanningSequence": ["RM"], "SequenceVariant": ["NONE"]}
ENUMERATED = {
    "PatientSex": {"M", "F", "O"},
    "ScanningSequence": {"SE", "IR", "GR", "EP", "RM"},
    "SequenceVariant": {"SK", "MTC", "SS", "TRSS", "SP", "MP", "OSP", "NONE"},
    "MRAcquisitionType": {"2D", "3D"},
    "LossyImageCompression": {"00", "01"},
    "Laterality": {"R", "L"},
    "PatientPosition": set("HFP HFS HFDR HFDL FFDR FFDL FFP FFS LFP LFS RFP RFS AFDR AFDL PFDR PFDL".split()),
}


def valid(elem: DataElement) -> bool:
    """Whether a source element can go into the output as it is: the VR and VM of the data dictionary, every
    value valid for its VR, and (where the standard enumerates them) an allowed value."""
    if elem.is_empty or elem.VR != dictionary_VR(elem.tag):
        return False
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    if dictionary_VM(elem.tag) == "1" and len(values) > 1:
        return False
    try:
        for value in values:
            validate_value(elem.VR, str(value) if elem.VR in ("DS", "IS") else value, config.RAISE)
    except (ValueError, TypeError):
        return False
    if elem.VR == "PN" and any(len(group.split("^")) > 5 for group in str(elem.value).split("=")):
        return False
    return all(str(v) in ENUMERATED[elem.keyword] for v in values) if elem.keyword in ENUMERATED else True


def copy_valid(source: Dataset, target: Dataset, keywords: Iterable[tuple[str, bool]]) -> None:
    """Copies each keyword's element whose value is valid; a type 2 one (flag True) is written empty otherwise."""
    for keyword, type2 in keywords:
        elem = source.data_element(keyword) if keyword in source else None
        if elem is not None and valid(elem):
            target[elem.tag] = DataElement(elem.tag, elem.VR, elem.value)
        else:
            if elem is not None and not elem.is_empty:
                logger.warning(f"{getattr(source, 'filename', '')}: invalid {keyword} {elem.value!r} not copied")
            if type2:
                setattr(target, keyword, None)


def _ds(values: Iterable[float]) -> list[DSfloat]:
    return [DSfloat(float(v), auto_format=True) for v in values]


def _code(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _reference(ds: Dataset, frame: int | None = None, purpose=None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    if purpose is not None:
        item.PurposeOfReferenceCodeSequence = [_code(purpose)]
    return item


class DerivedSeries:
    """The output series of a finished job: ``instance(k)`` is the instance of its k-th plane.

    Pixels are 16-bit integers in the source's units: CT with Rescale Slope 1 and Intercept 0 (HU), MR as values
    (MR has no modality rescale). Window center/width cover the output's 0.5-99.5 percentiles.
    """

    def __init__(self, job: Job, now: datetime | None = None) -> None:
        self.job, self.model, self.now = job, job.model, now or datetime.now()
        self.source = job.planes[0].dataset
        self.modality = MODALITIES[self.source.SOPClassUID]
        self.uid = generate_uid()
        limits = (-(2**15), 2**15 - 1) if job.images.min() < 0 else (0, 2**16 - 1)
        if job.images.min() < limits[0] or job.images.max() > limits[1]:
            logger.warning(f"{job.name}: output values beyond {limits} are clipped")
        self.stored = np.clip(np.rint(job.images), *limits).astype(np.int16 if limits[0] else np.uint16)
        lo, hi = np.percentile(job.images, [0.5, 99.5])
        self.window = _ds([(lo + hi) / 2, max(hi - lo, 1.0)])
        frame_of_reference = self.source.get("FrameOfReferenceUID")
        if frame_of_reference is not None and valid(self.source["FrameOfReferenceUID"]):
            self.frame_of_reference = frame_of_reference
        else:
            logger.warning(f"{job.name}: invalid FrameOfReferenceUID {frame_of_reference!r}, the output gets a new one")
            self.frame_of_reference = generate_uid()

    def description(self) -> str:
        """SeriesDescription: what the series is, first, then the source's description (64 characters at most)."""
        source = str(self.source.get("SeriesDescription", "") or "")
        return f"{DESCRIPTIONS[self.job.task]} {source}".strip()[:64]

    def derivation(self) -> str:
        """DerivationDescription (1024 characters at most)."""
        job, model = self.job, self.model
        how = f"{model.name} {model.version} ({model.settings}, {job.nfe} network evaluations per image"
        how += f"; {job.details})" if job.details else ")"
        series = self.source.SeriesInstanceUID
        if job.task == "synthesize":
            text = (
                f"Synthetic image, not acquired: generated by {how} from the segmentation {job.seg.SOPInstanceUID} "
                f"on the geometry of series {series}."
            )
        else:
            text = f"Denoised by {how} from series {series}."
        return text[:1024]

    def series_number(self) -> int:
        """The source's SeriesNumber plus SERIES_NUMBER_OFFSET (the offset alone if the source has none)."""
        elem = self.source.get("SeriesNumber")
        number = int(elem) if elem is not None and valid(self.source["SeriesNumber"]) else 0
        return number + SERIES_NUMBER_OFFSET if 0 <= number < 2**31 - SERIES_NUMBER_OFFSET else SERIES_NUMBER_OFFSET

    def instance(self, k: int) -> Dataset:
        """The output instance of plane ``k`` (sorted along the normal; its InstanceNumber is k + 1)."""
        plane, job, model = self.job.planes[k], self.job, self.model
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[self.modality], generate_uid()
        ds.InstanceCreationDate = ds.SeriesDate = ds.ContentDate = self.now.strftime("%Y%m%d")
        ds.InstanceCreationTime = ds.SeriesTime = ds.ContentTime = self.now.strftime("%H%M%S")
        copy_valid(self.source, ds, FROM_SOURCE)
        ds.StudyInstanceUID = self.source.StudyInstanceUID  # kept as it is: the output belongs to this study
        if "Laterality" not in ds and "BodyPartExamined" not in ds:
            ds.Laterality = None  # empty: unknown (absent would say the unknown body part is unpaired)
        ds.FrameOfReferenceUID = self.frame_of_reference
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = self.modality, self.uid, self.series_number()
        ds.SeriesDescription = self.description()
        ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = MANUFACTURER, model.name[:64], model.version
        equipment = Dataset()
        equipment.Manufacturer, equipment.ManufacturerModelName = MANUFACTURER, model.name[:64]
        equipment.SoftwareVersions = model.version
        equipment.ContributionDateTime = self.now.strftime("%Y%m%d%H%M%S")
        equipment.ContributionDescription = f"{job.task} by {model.name}"[:64]
        equipment.PurposeOfReferenceCodeSequence = [_code(PURPOSES[job.task])]
        ds.ContributingEquipmentSequence = [equipment]
        ds.ImageType = ["DERIVED", "SECONDARY", IMAGE_TYPE_3[self.modality]]
        ds.InstanceNumber = k + 1
        ds.DerivationDescription = self.derivation()
        self._references(ds, plane)
        if job.task == "synthesize":
            ds.SyntheticData = "YES"
            for keyword, type2 in ACQUISITION[self.modality]:
                if type2:
                    setattr(ds, keyword, None)
        else:
            copy_valid(plane.dataset, ds, ACQUISITION[self.modality])
        if self.modality == "MR":
            for keyword, value in MR_DEFAULTS.items():
                if keyword not in ds:
                    setattr(ds, keyword, value)
            if "IR" not in ds["ScanningSequence"].value and "InversionTime" in ds:
                del ds.InversionTime  # Inversion Time belongs to inversion recovery sequences only
        ds.ImagePositionPatient = _ds(plane.position)
        ds.ImageOrientationPatient = _ds(plane.orientation)
        ds.PixelSpacing = _ds(plane.spacing)
        ds.SliceThickness = _ds([plane.thickness])[0] if plane.thickness and plane.thickness > 0 else None
        self._pixels(ds, self.stored[k])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds

    def _references(self, ds: Dataset, plane: Plane) -> None:
        """Source Image Sequence (what the image was made from), Referenced Image Sequence (the plane a synthetic
        image takes its geometry from) and, per series, the Referenced Series Sequence of those instances."""
        if self.job.task == "synthesize":
            seg = self.job.seg
            ds.SourceImageSequence = [_reference(seg, purpose=codes.DCM.MaskImageForImageProcessingOperation)]
            ds.ReferencedImageSequence = [_reference(plane.dataset, plane.frame)]
            referenced = [seg, plane.dataset]
        else:
            purpose = codes.DCM.SourceImageForImageProcessingOperation
            ds.SourceImageSequence = [_reference(plane.dataset, plane.frame, purpose)]
            referenced = [plane.dataset]
        series = []
        for source in referenced:
            item = Dataset()
            item.SeriesInstanceUID = source.SeriesInstanceUID
            item.ReferencedInstanceSequence = [_reference(source)]
            series.append(item)
        ds.ReferencedSeriesSequence = series

    def _pixels(self, ds: Dataset, stored: np.ndarray) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(stored.dtype == np.int16)
        if self.modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.WindowCenter, ds.WindowWidth = self.window
        ds.PixelData = stored.tobytes()
