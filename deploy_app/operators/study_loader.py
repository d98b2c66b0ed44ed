"""Loads the DICOM files under the input folder into studies, file by file, keeping every problem."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from motfm_deploy.images import InputError, decode
from motfm_deploy.report import Problem

logger = logging.getLogger(__name__)
UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_whole(path: Path) -> Dataset:
    """Reads a DICOM file and decodes every element of its file meta and data set, sequences included (pydicom
    decodes them lazily, at first use), and its pixel data (decoded and dropped; InputError if it cannot be): a
    damaged file (flipped bytes, a wrong length, cut pixels) raises here, whatever the exception, not in a later
    operator."""
    ds = dcmread(path)
    for dataset in (ds.file_meta, ds):
        for _ in dataset.iterall():
            pass
    if "PixelData" in ds:
        decode(ds, keep=False)
    return ds


def looks_like_dicom(path: Path) -> bool:
    """Whether a file pydicom refuses as not DICOM looks like a damaged DICOM file: a .dcm name, or a preamble of
    128 zero bytes (a README, a spreadsheet or a viewer on a CD has neither)."""
    with open(path, "rb") as f:
        head = f.read(132)
    return path.suffix.lower() == ".dcm" or (len(head) == 132 and head[:128] == bytes(128))


class StudyLoaderOperator(DICOMDataLoaderOperator):
    """The SDK's DICOM loader, made tolerant: one bad file does not stop the run, and none is dropped silently.

    - a file that is not DICOM, or a DICOMDIR (a media index; the files it references are read like any other),
      is skipped with a warning naming it; one without the DICM marker that looks like a damaged DICOM file
      (``looks_like_dicom``) is a failure, as below;
    - a DICOM file that cannot be read whole (``read_whole``: any error of pydicom's or of a pixel decoder, e.g.
      flipped bytes in its file meta or data set, a truncated header, a wrong length, cut pixels) or lacks its UIDs
      is a failure naming it and the reason, reported at the end of the run; the other files are used as if it
      were absent;
    - every instance is kept (the SDK loader keeps one instance per position, which loses instances).

    Named outputs:
        dicom_study_list: list[DICOMStudy], as the SDK loader gives (for the SDK's series selector).
        failures: list[Problem], one per unusable file.
    """

    def setup(self, spec: OperatorSpec) -> None:
        super().setup(spec)
        spec.output("failures")

    def compute(self, op_input, op_output, context) -> None:
        studies, failures = self.load(Path(self.input_path))
        op_output.emit(studies, self.output_name)
        op_output.emit(failures, "failures")

    def load(self, folder: Path) -> tuple[list[DICOMStudy], list[Problem]]:
        """Reads every file under ``folder``; returns the studies and the failures. Raises ValueError if nothing
        in ``folder`` is a usable DICOM instance."""
        if not folder.is_dir():
            raise ValueError(f"input folder {folder} does not exist or is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        studies: dict[str, DICOMStudy] = {}
        series: dict[tuple[str, str], DICOMSeries] = {}
        failures: list[Problem] = []
        skipped, seen = [], set()
        for count, path in enumerate(files, 1):
            if count % 500 == 0:
                logger.info(f"read {count} of {len(files)} files")
            try:
                ds = read_whole(path)
            except InvalidDicomError:
                if looks_like_dicom(path):
                    failures.append(Problem([str(path)], f"{path}: damaged DICOM file (no DICM marker at byte 128)"))
                else:
                    logger.warning(f"{path}: not a DICOM file, skipped")
                    skipped.append(f"{path}: not a DICOM file")
                continue
            except InputError as e:
                failures.append(Problem([str(path)], str(e)))
                continue
            except Exception as e:
                failures.append(Problem([str(path)], f"{path}: corrupt DICOM file ({type(e).__name__}: {e})"))
                continue
            if ds.file_meta.get("MediaStorageSOPClassUID") in self.SOP_CLASSES_TO_IGNORE:
                logger.warning(f"{path}: a DICOMDIR, skipped (the files it references are read like any other)")
                skipped.append(f"{path}: a DICOMDIR")
                continue
            missing = [k for k in UIDS if not ds.get(k)]
            if missing:
                failures.append(Problem([str(path)], f"{path}: not a usable DICOM instance (no {', '.join(missing)})"))
                continue
            if ds.SOPInstanceUID in seen:
                logger.info(f"{path}: an instance read before, skipped")
                continue
            try:
                self._add(ds, studies, series)
            except Exception as e:
                message = f"{path}: unreadable study or series attributes ({type(e).__name__}: {e})"
                failures.append(Problem([str(path)], message))
                continue
            seen.add(ds.SOPInstanceUID)
        if not studies:
            problems = ([f.message for f in failures] + skipped)[:10] or [f"{folder} holds no files"]
            raise ValueError(f"no DICOM study in input folder {folder}: " + "; ".join(problems))
        logger.info(f"read {len(seen)} instances of {len(series)} series in {len(studies)} studies from {folder}")
        return list(studies.values()), failures

    def _add(self, ds, studies: dict[str, DICOMStudy], series: dict[tuple[str, str], DICOMSeries]) -> None:
        """Adds ``ds`` to its series in its study (a series is keyed by both UIDs: an instance whose study differs
        from its series' other instances makes a series of its own)."""
        study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        if study_uid not in studies:
            study = DICOMStudy(study_uid)
            self.populate_study_attributes(study, ds)
            studies[study_uid] = study
        if (study_uid, series_uid) not in series:
            new = DICOMSeries(series_uid)
            self.populate_series_attributes(new, ds)
            series[study_uid, series_uid] = new
            studies[study_uid].add_series(new)
        series[study_uid, series_uid].add_sop_instance(ds)
