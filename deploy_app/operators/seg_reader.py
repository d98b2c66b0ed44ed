"""Chooses each study's task and prepares its jobs, reading its DICOM SEGs for synthesis."""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from motfm_deploy.images import MODALITIES, Plane, file_of, planes_of, read_planes, same_grid
from motfm_deploy.jobs import Job
from motfm_deploy.labels import LabelMap

logger = logging.getLogger(__name__)


def instances(series: DICOMSeries) -> list[Dataset]:
    return [sop.get_native_sop_instance() for sop in series.get_sop_instances()]


def files_of(datasets: list[Dataset]) -> list[str]:
    return [file_of(ds) for ds in datasets]


def describe(datasets: list[Dataset]) -> str:
    """A series for messages: modality, description and its first file."""
    first = datasets[0]
    more = f" and {len(datasets) - 1} more files" if len(datasets) > 1 else ""
    return f"{first.get('Modality', '?')} series '{first.get('SeriesDescription', '')}' ({file_of(first)}{more})"


def denoise_job(datasets: list[Dataset]) -> Job:
    """A denoising job from an image series' instances; a problem fails the job, naming the file."""
    name, files = describe(datasets), files_of(datasets)
    try:
        return Job("denoise", name, read_planes(datasets), files=files)
    except ValueError as e:
        return Job("denoise", name, error=str(e), files=files)


def synthesis_job(seg_ds: Dataset, study_series: list[DICOMSeries], label_map: LabelMap) -> Job:
    """A synthesis job from one SEG instance and the series of its study; a problem fails the job, naming the SEG."""
    where = file_of(seg_ds)
    files = [where]
    try:
        seg = hd.seg.Segmentation.from_dataset(seg_ds)
        referenced = {uid for _, uid, _ in seg.get_source_image_uids()}
        sources = [instances(s) for s in study_series if s.SeriesInstanceUID in referenced]
        files += [file for source in sources for file in files_of(source)]
        if len(sources) != 1:
            raise ValueError(
                f"its source series {sorted(referenced) or '(none referenced)'} is not in the input; "
                "the SEG's source images are needed for the output's geometry"
                if not sources
                else f"it references {len(sources)} series; one source series is supported"
            )
        planes = read_planes(sources[0])
        for frame in planes_of(seg_ds):
            if not any(same_grid(frame, plane) for plane in planes):
                raise ValueError(
                    f"mismatched geometry: its frame {frame.frame + 1} ({frame.shape[0]}x{frame.shape[1]} at "
                    f"{np.round(frame.position, 2).tolist()} mm) lies on no image of its source series"
                )
        labels = seg_labels(seg, planes, label_map, where)
    except Exception as e:
        return Job("synthesize", f"DICOM SEG {where}", seg=seg_ds, error=f"{where}: {e}", files=files)
    return Job("synthesize", f"DICOM SEG {where} on {describe(sources[0])}", planes, labels, seg_ds, files=files)


def seg_labels(seg: hd.seg.Segmentation, planes: list[Plane], label_map: LabelMap, where: str) -> np.ndarray:
    """The SEG's segments that ``label_map`` maps, as model labels on the source planes (n, rows, columns), uint8;
    the higher label wins where segments overlap. Raises ValueError if none maps or all are empty."""
    mapped, ignored = {}, []
    for number in seg.segment_numbers:
        segment = seg.get_segment_description(number)
        code = segment.segmented_property_type
        label = label_map.label_of(code.scheme_designator, code.value, segment.segment_label)
        if label is None:
            ignored.append(f"'{segment.segment_label}' ({code.scheme_designator} {code.value} {code.meaning})")
        else:
            mapped[number] = label
    if not mapped:
        raise ValueError(f"none of its segments maps to a model label: {', '.join(ignored)} (see {label_map.source})")
    if ignored:
        logger.warning(f"{where}: segments not in the label map, ignored: {', '.join(ignored)}")
    numbers = sorted(mapped)
    options = {"segment_numbers": numbers, "assert_missing_frames_are_empty": True}
    if all(p.frame is None for p in planes):
        uids = [p.dataset.SOPInstanceUID for p in planes]
        masks = seg.get_pixels_by_source_instance(uids, **options)
    elif len({id(p.dataset) for p in planes}) == 1:
        source = planes[0].dataset.SOPInstanceUID
        masks = seg.get_pixels_by_source_frame(source, [p.frame + 1 for p in planes], **options)
    else:
        raise ValueError("its source series has several multi-frame objects; one is supported")
    labels = np.zeros(masks.shape[:3], np.uint8)
    for label in sorted(set(mapped.values())):  # the higher label wins where segments overlap
        chosen = [i for i, n in enumerate(numbers) if mapped[n] == label]
        labels[(masks[..., chosen] > 0.5).any(-1)] = label
    if not labels.any():
        raise ValueError(f"its segments mapped to model labels are empty ({len(numbers)} segments)")
    return labels


class SegReaderOperator(Operator):
    """Makes the jobs of each study from its selected series.

    A study with a DICOM SEG among its selected series gets one synthesis job per SEG: its segments mapped to
    model labels (``LabelMap``) on the planes of the SEG's source series, whose geometry the output takes. A study
    without one gets one denoising job per selected CT or MR image series. ``task`` forces either.
    A problem becomes a failed job whose error names the file, so other series still go on.

    Named input:
        study_selected_series_list: list[StudySelectedSeries] from the SDK's series selector.
    Named outputs:
        synthesis, denoise: list[Job].
    """

    def __init__(self, fragment: Fragment, *args, label_map: LabelMap, task: str | None = None, **kwargs) -> None:
        self.label_map, self.task = label_map, task
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.output("synthesis")
        spec.output("denoise")

    def compute(self, op_input, op_output, context) -> None:
        selections = op_input.receive("study_selected_series_list") or []
        jobs = [job for selection in selections for job in self.plan(selection)]
        for job in jobs:
            logger.info(f"{job.task}: {job.name}" + (f" FAILED: {job.error}" if job.error else ""))
        op_output.emit([j for j in jobs if j.task == "synthesize"], "synthesis")
        op_output.emit([j for j in jobs if j.task == "denoise"], "denoise")

    def plan(self, selection: StudySelectedSeries) -> list[Job]:
        """The jobs of one study."""
        chosen = list({s.series.SeriesInstanceUID: s.series for s in selection.selected_series}.values())
        segs = [ds for s in chosen for ds in instances(s) if ds.SOPClassUID == SegmentationStorage]
        images = [instances(s) for s in chosen if any(ds.SOPClassUID in MODALITIES for ds in instances(s))]
        task = self.task or ("synthesize" if segs else "denoise")
        study = f"study {selection.study.StudyInstanceUID}"
        files = [file for s in chosen for file in files_of(instances(s))]
        if task == "synthesize":
            if not segs:
                first = ", ".join(file_of(instances(s)[0]) for s in chosen)
                return [Job(task, study, error=f"{study} ({first}): no DICOM SEG to synthesize from", files=files)]
            return [synthesis_job(ds, selection.study.get_all_series(), self.label_map) for ds in segs]
        if not images:
            found = "; ".join(describe(instances(s)) for s in chosen)
            error = f"{study} has no CT or MR image series to denoise (found {found})"
            return [Job(task, study, error=error, files=files)]
        return [denoise_job(datasets) for datasets in images]
