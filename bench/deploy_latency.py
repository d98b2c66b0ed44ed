"""Latency of the deploy app: a 20-slice MR series with its DICOM SEG synthesized at 10 NFE, end to end through the
Holoscan application against the model alone, in one process.

    python bench/deploy_latency.py [--model BUNDLE] [--repeats 3] [--threads 1] [--out results/deploy_latency.json]

- end to end: ``MotfmApp.run()`` from DICOM files in to DICOM files out (loading and grouping the files, loading
  the bundle, reading the SEG, preparing the slices, sampling, resampling back to the 256 x 256 matrix, writing and
  validating the series). "cold" is the first run in the process, "warm" the median of the others;
- model only: the sampler's ``generate`` calls on the same 20 slices in the same batches, inputs already prepared
  (median of as many runs, interleaved with the app's);
- overhead ratio: warm end to end / model only (goal: under 1.2), in wall-clock seconds and, steadier on a shared
  machine, in this process's CPU seconds;
- start-up: importing the app (Holoscan, MONAI, torch), paid once per process, reported apart.

BUNDLE defaults to bundle/ when it holds the shipped model (models/model.pt); otherwise a bundle with the shipped
configuration and untrained weights is made, which costs the same time.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fire
from records import ROOT, run_info, save

SLICES, SLICE_GAP, MATRIX, NFE = 20, 5.0, (256, 256), 10


def write_inputs(folder: Path, data_dir: Path):
    """The 20-slice MR series (256 x 256, 1 mm pixels, 5 mm apart) and its SEG, from a test subject's volume of
    ``data_dir`` (without one there: of a one-subject-per-split data set built in ``folder``)."""
    from scripts.synthetic_subjects import build, subject_volume
    from testbed.studies import study_header, write_mr_series, write_seg

    data = data_dir
    if not (data / "datalist_3d.json").is_file():
        data = Path(build(str(folder / "data"), subjects=(1, 1, 1)))
    image, labels = subject_volume(str(data))
    gaps = [SLICE_GAP] * (SLICES - 1)
    source = write_mr_series(folder / "in" / "t1", image, study_header(), SLICES, gaps=gaps, shape=MATRIX, spacing=1)
    return source, write_seg(folder / "in" / "seg.dcm", source, labels)


def main(
    model: str | None = None,
    repeats: int = 3,
    threads: int = 1,
    out: str = "results/deploy_latency.json",
    data_dir: str = str(ROOT / "bundle" / "data"),
):
    """Times the app ``repeats`` times and the model alone as often, interleaved; prints and saves the timings.
    The study is written from a test subject of ``data_dir``."""
    start = time.perf_counter()
    from app import MotfmApp

    startup = time.perf_counter() - start
    import torch
    from monai.data import list_data_collate
    from monai.deploy.core.domain.dicom_series import DICOMSeries

    from motfm_deploy.labels import LabelMap
    from motfm_deploy.model import Bundle, batches
    from operators.seg_reader import synthesis_job
    from operators.synthesis import synthesis_cases
    from testbed.bundles import make_bundle

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="deploy_latency-"))
    try:
        source, seg = write_inputs(work, Path(data_dir))
        shipped = (ROOT / "bundle" / "models" / "model.pt").is_file()
        bundle = Path(model) if model else ROOT / "bundle" if shipped else make_bundle(work / "bundle")
        loaded = Bundle(bundle).model
        series = DICOMSeries(source[0].SeriesInstanceUID)
        for ds in source:
            series.add_sop_instance(ds)
        prepared = loaded.prepare(synthesis_cases(loaded, synthesis_job(seg, [series], LabelMap.read())))
        app_runs, model_runs = [], []  # (wall, CPU) seconds
        for run in range(repeats):
            paths = ["-i", str(work / "in"), "-o", str(work / f"out{run}"), "-m", str(bundle)]
            t0, c0 = time.perf_counter(), time.process_time()
            MotfmApp([sys.executable, "deploy_app", *paths]).run()
            app_runs.append((time.perf_counter() - t0, time.process_time() - c0))
            t0, c0 = time.perf_counter(), time.process_time()
            for chunk in batches(prepared, loaded.batch_size):
                batch, shape = list_data_collate(list(chunk)), [1, *loaded.image_size]
                _, nfe = loaded.sampler.generate(loaded.network, batch, shape, loaded.seed, loaded.device)
            model_runs.append((time.perf_counter() - t0, time.process_time() - c0))
        if nfe != NFE:
            raise ValueError(f"the benchmark is defined at {NFE} NFE; the bundle's sampler gives {nfe}")
        warm = [statistics.median(t) for t in zip(*(app_runs[1:] or app_runs))]
        model_only = [statistics.median(t) for t in zip(*model_runs)]
        result = {
            **run_info("deploy_latency"),
            "slices": SLICES,
            "matrix": list(MATRIX),
            "nfe": nfe,
            "model": f"{loaded.name} {loaded.version}, image size {loaded.image_size}, {loaded.settings}"
            + ("" if shipped or model else " (untrained weights)"),
            "device": str(loaded.device),
            "torch_threads": threads,
            "repeats": repeats,
            "startup_seconds": round(startup, 2),
            "end_to_end_cold_seconds": round(app_runs[0][0], 3),
            "end_to_end_warm_seconds": round(warm[0], 3),
            "model_only_seconds": round(model_only[0], 3),
            "overhead_ratio": round(warm[0] / model_only[0], 3),
            "end_to_end_warm_cpu_seconds": round(warm[1], 3),
            "model_only_cpu_seconds": round(model_only[1], 3),
            "overhead_ratio_cpu_time": round(warm[1] / model_only[1], 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save(result, out)


if __name__ == "__main__":
    fire.Fire(main)
