"""A seeded fuzz of the deploy app's input side: damaged DICOM files beside an intact series, read as the app reads
them; counts crashes, contained errors, unnamed files and intact series lost (the goal: none of each but the
contained errors).

    python bench/fuzz_inputs.py [--trials 200] [--slices 6] [--damaged 3] [--seed 0] [--out results/fuzz_inputs.json]

Each trial is a study on disk holding an intact MR series and a second series of ``slices`` planes of which
``damaged`` files are damaged, each with a kind drawn from ``testbed.damage.KINDS`` (flipped bits or an unknown value
representation in the file meta or the data set, the file meta or the pixel data cut short, a length past the end of
the file, a flipped bit in the DICM marker), all drawn from ``seed`` and the trial's number. The input side runs as
in the app, in one process: the study loader, the SDK's series selector, the task planning
(``SegReaderOperator.plan``) and, per job, the decoding of every plane (``motfm_deploy.jobs.process``, which contains
a job's errors as the app's operators do). The model is not run: it never reads a file.

- crash: an exception escaped one of these steps (the app would end without processing anything);
- contained: a damaged file named, with the reason, among the run's problems (a skipped file or a failed job);
- accepted: a damaged file the app finds nothing wrong with (the flipped bits fell in a value, which no reader can
  tell from an intact one): processed with its series, or, where other files failed its series, processed when it
  is the only file of the input;
- unnamed: any other damaged file (its series failed and the problems do not name it);
- lost intact series: the intact series did not come out as one job with all its planes decoded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import fire
import numpy as np
from records import ROOT, run_info, save


def input_side(folder: Path) -> tuple[list, list]:
    """The app's input side on ``folder``: (the loader's failures, the jobs after decoding their planes)."""
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

    from motfm_deploy.jobs import process
    from motfm_deploy.labels import LabelMap
    from operators.seg_reader import SegReaderOperator
    from operators.study_loader import StudyLoaderOperator

    studies, failures = StudyLoaderOperator(Fragment(), input_folder=folder, name="loader").load(folder)
    selections = DICOMSeriesSelectorOperator(Fragment(), name="selector").filter(None, studies)
    reader = SegReaderOperator(Fragment(), label_map=LabelMap.read(), task=None, name="reader")
    jobs = [job for selection in selections for job in reader.plan(selection)]
    return failures, process(jobs, lambda job: [plane.pixels() for plane in job.planes] and job)


def usable_alone(path: Path, folder: Path) -> bool:
    """Whether the input side, given ``path`` alone (copied into ``folder``), processes it without a problem."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    shutil.copy(path, folder)
    try:
        failures, jobs = input_side(folder)
    except Exception:
        return False
    return not failures and bool(jobs) and all(job.error is None for job in jobs)


def main(
    trials: int = 200, slices: int = 6, damaged: int = 3, seed: int = 0, out: str = "results/fuzz_inputs.json"
) -> None:
    """Runs the trials; prints and saves the counts."""
    import logging

    from scripts.synthetic_subjects import build
    from testbed.damage import KINDS, damage
    from testbed.studies import load_volumes, study_header, write_mr_series

    logging.disable(logging.CRITICAL)  # the trials' problems are counted, not logged
    warnings.simplefilter("ignore")  # pydicom's warnings about the damaged values
    work = Path(tempfile.mkdtemp(prefix="fuzz_inputs-"))
    counts, kinds, crashes = Counter(), {k: Counter() for k in KINDS}, []
    try:
        data = ROOT / "bundle" / "data"
        if not (data / "datalist_3d.json").is_file():
            data = Path(build(str(work / "data"), subjects=(1, 1, 1), slice_step_mm=6))
        volumes = load_volumes(data)
        study, grid = study_header(), {"shape": (32, 32), "spacing": 6.0}
        intact = write_mr_series(work / "intact", volumes[0], study, slices, **grid)
        source = write_mr_series(work / "source", volumes[0], study, slices, centre=(0, 0, 0), **grid)
        started = time.perf_counter()
        for trial in range(trials):
            rng = np.random.default_rng([seed, trial])
            folder = work / "trial"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(work / "intact", folder / "intact")
            hit, chosen = {}, set(rng.choice(slices, damaged, replace=False).tolist())
            for k, ds in enumerate(source):
                path = folder / "damaged" / Path(ds.filename).name
                path.parent.mkdir(parents=True, exist_ok=True)
                data_bytes = Path(ds.filename).read_bytes()
                if k in chosen:
                    kind = str(rng.choice(KINDS))
                    hit[str(path)], data_bytes = kind, damage(data_bytes, kind, rng)
                path.write_bytes(data_bytes)
            try:
                failures, jobs = input_side(folder)
            except Exception as e:
                counts["crashes"] += 1
                crashes.append(f"trial {trial}: {type(e).__name__}: {e}")
                continue
            problems = [f.message for f in failures] + [job.error for job in jobs if job.error is not None]
            done = [job for job in jobs if job.error is None]
            accepted = {f for job in done for f in job.files}
            for path, kind in hit.items():
                outcome = (
                    "contained"
                    if any(path in p for p in problems)
                    else "accepted"
                    if path in accepted or usable_alone(Path(path), work / "alone")
                    else "unnamed"
                )
                counts[outcome] += 1
                kinds[kind][outcome] += 1
            whole = [j for j in done if j.planes[0].dataset.SeriesInstanceUID == intact[0].SeriesInstanceUID]
            counts["intact_series_lost"] += not (len(whole) == 1 and len(whole[0].planes) == slices)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = run_info("fuzz_inputs") | {
        "trials": trials,
        "slices": slices,
        "damaged_per_trial": damaged,
        "seed": seed,
        "damaged_files": trials * damaged,
        "crashes": counts["crashes"],
        "contained": counts["contained"],
        "accepted": counts["accepted"],
        "unnamed_rejected": counts["unnamed"],
        "intact_series_lost": counts["intact_series_lost"],
        "by_kind": {kind: dict(c) for kind, c in kinds.items()},
        "crash_examples": crashes[:5],
        "seconds": round(seconds, 1),
    }
    save(result, out)


if __name__ == "__main__":
    fire.Fire(main)
