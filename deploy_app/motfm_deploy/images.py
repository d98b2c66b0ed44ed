"""Image planes of a DICOM series: per-plane geometry and pixels in the modality's units.

A plane is one classic single-frame instance or one frame of an enhanced (or legacy converted enhanced)
multi-frame object, whose geometry comes from its per-frame (else shared) functional groups. Positions and
directions are in the patient coordinate system DICOM uses (LPS, mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
)

# image SOP classes the app reads, with the modality of the classic series it writes for them
MODALITIES = {
    CTImageStorage: "CT",
    EnhancedCTImageStorage: "CT",
    LegacyConvertedEnhancedCTImageStorage: "CT",
    MRImageStorage: "MR",
    EnhancedMRImageStorage: "MR",
    LegacyConvertedEnhancedMRImageStorage: "MR",
}
TOLERANCE = 1e-3  # direction cosines: unit length and orthogonality


class InputError(ValueError):
    """A problem with the input; the message names the file."""


def file_of(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or "<in memory>")


def decode(ds: Dataset, keep: bool = True) -> np.ndarray:
    """The stored pixel values of ``ds`` (kept in ``ds`` if ``keep``, else decoded and dropped); any error of the
    decoder raises InputError naming the file and its transfer syntax."""
    try:
        return ds.pixel_array if keep else pixel_array(ds)
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise InputError(f"{file_of(ds)}: cannot decode its pixel data ({name}): {e}") from e


@dataclass
class Plane:
    """One 2D image of a series and where it lies.

    Attributes:
        dataset: the instance it comes from.
        frame: its frame index (0-based) in a multi-frame object; None for a single-frame instance.
        position: (3,) centre of the first (top left) pixel, mm.
        row_cosine: (3,) direction along a row (increasing column index).
        column_cosine: (3,) direction down a column (increasing row index).
        spacing: (2,) mm between rows, between columns (PixelSpacing).
        shape: (rows, columns).
        thickness: SliceThickness (mm) if the source gives a valid one.
        slope, intercept: the modality rescale that gives the stored values' units (HU for CT).
    """

    dataset: Dataset
    frame: int | None
    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int]
    thickness: float | None = None
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def file(self) -> str:
        return file_of(self.dataset)

    @property
    def where(self) -> str:
        """The file (and frame) for messages."""
        return self.file if self.frame is None else f"{self.file} frame {self.frame + 1}"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)

    @property
    def orientation(self) -> list[float]:
        """ImageOrientationPatient: the row then the column direction cosines."""
        return [*self.row_cosine.tolist(), *self.column_cosine.tolist()]

    def pixels(self) -> np.ndarray:
        """The plane's pixels (rows, columns), float32, in the modality's units."""
        stored = decode(self.dataset)
        if self.frame is not None and stored.ndim == 3:
            stored = stored[self.frame]
        if stored.shape != self.shape:
            raise InputError(f"{self.where}: pixel data of shape {stored.shape}, expected {self.shape}")
        return (stored.astype(np.float32) * self.slope + self.intercept).astype(np.float32)


def _group(ds: Dataset, frame: int, name: str) -> Dataset | None:
    """The first item of functional group ``name`` for ``frame``: per-frame, else shared, else None."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups) or []
        found = items[index].get(name) if len(items) > index else None
        if found:
            return found[0]
    return None


def _floats(source: Dataset | None, keyword: str, count: int, where: str) -> np.ndarray:
    value = None if source is None else source.get(keyword)
    try:
        values = np.array([float(v) for v in (value if isinstance(value, Sequence) else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (count,) or not np.isfinite(values).all():
        raise InputError(f"{where}: no valid {keyword} (got {value!r}); the app needs cross-sectional images")
    return values


def _number(source: Dataset, keyword: str, default: float, where: str) -> float:
    value = source.get(keyword)
    try:
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: invalid {keyword} {value!r}") from e


def _plane(ds: Dataset, frame: int | None) -> Plane:
    where = file_of(ds) if frame is None else f"{file_of(ds)} frame {frame + 1}"
    if frame is None:
        position, orientation, measures, rescale = ds, ds, ds, ds
    else:
        position = _group(ds, frame, "PlanePositionSequence")
        orientation = _group(ds, frame, "PlaneOrientationSequence")
        measures = _group(ds, frame, "PixelMeasuresSequence")
        rescale = _group(ds, frame, "PixelValueTransformationSequence") or ds
    cosines = _floats(orientation, "ImageOrientationPatient", 6, where)
    row, column = cosines[:3], cosines[3:]
    if (
        abs(np.linalg.norm(row) - 1) > TOLERANCE
        or abs(np.linalg.norm(column) - 1) > TOLERANCE
        or abs(row @ column) > TOLERANCE
    ):
        raise InputError(f"{where}: ImageOrientationPatient {cosines.tolist()} is not two orthogonal unit vectors")
    spacing = _floats(measures, "PixelSpacing", 2, where)
    if (spacing <= 0).any():
        raise InputError(f"{where}: PixelSpacing {spacing.tolist()} is not positive")
    slope, intercept = (_number(rescale, k, d, where) for k, d in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)))
    shape = (int(ds.Rows), int(ds.Columns))
    position = _floats(position, "ImagePositionPatient", 3, where)
    try:
        thickness = float(measures.get("SliceThickness"))
    except (TypeError, ValueError):
        thickness = None
    return Plane(ds, frame, position, row, column, spacing, shape, thickness, slope, intercept)


def planes_of(ds: Dataset) -> list[Plane]:
    """The planes of one instance: itself, or each frame of a multi-frame object. Raises InputError."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return [_plane(ds, f) for f in range(frames)]
    return [_plane(ds, None)]


def check_image(ds: Dataset) -> None:
    """Raises InputError unless ``ds`` is a single-channel greyscale CT or MR image the app can read."""
    where = file_of(ds)
    if ds.get("SOPClassUID") not in MODALITIES:
        sop = ds.get("SOPClassUID")
        name = sop.name if sop is not None else "no SOP Class UID"
        raise InputError(f"{where}: {name} is not a CT or MR image SOP class this app reads")
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise InputError(f"{where}: has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or ds.get("PhotometricInterpretation") != "MONOCHROME2":
        raise InputError(
            f"{where}: only single-sample MONOCHROME2 images are supported "
            f"(SamplesPerPixel {ds.get('SamplesPerPixel')}, PhotometricInterpretation "
            f"{ds.get('PhotometricInterpretation')})"
        )


def read_planes(datasets: Sequence[Dataset]) -> list[Plane]:
    """Every plane of a series' instances, sorted along the first plane's normal (then by instance number).

    Multi-frame objects give one plane per frame, each with its own geometry. Every instance is checked: an
    InputError names each unusable file with its reason (any error reading its attributes makes it unusable).
    """
    planes, errors = [], []
    for ds in datasets:
        try:
            check_image(ds)
            planes += planes_of(ds)
        except InputError as e:
            errors.append(str(e))
        except Exception as e:
            errors.append(f"{file_of(ds)}: unreadable image attributes ({type(e).__name__}: {e})")
    if errors:
        raise InputError("; ".join(errors))
    if not planes:
        raise InputError("the series has no image")
    normal = planes[0].normal
    return sorted(planes, key=lambda p: (float(p.position @ normal), int(p.dataset.get("InstanceNumber") or 0)))


def same_grid(a: Plane, b: Plane) -> bool:
    """Whether two planes share their pixel grid: size, orientation, spacing, and position within 1% of a pixel."""
    return (
        a.shape == b.shape
        and np.allclose(a.orientation, b.orientation, atol=TOLERANCE)
        and np.allclose(a.spacing, b.spacing, rtol=TOLERANCE)
        and float(np.linalg.norm(a.position - b.position)) <= 0.01 * float(a.spacing.min())
    )
