"""PACS round trips through the DICOM node against a real Orthanc: studies go to the node (C-MOVE, or Orthanc's
"send to modality"), the node runs the real deploy app (a tiny model) and the new series come back into the same
studies. Then the hard cases: kill -9 while receiving and while processing, a destination that refuses for a
while, and a burst of 20 studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs_fixtures import app_runs, associate, move, store
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import _config

from pacs_node.receiver import CANNOT_UNDERSTAND, SUCCESS
from testbed.damage import damage
from testbed.pacs import TESTER_AET, Node, Orthanc, burst, complete
from testbed.studies import Study, study_header, write_mr_series, write_study


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield orthanc
    orthanc.stop()


@pytest.fixture
def start_node(tmp_path, model, pacs):
    """Starts a node with AE title ``ae_title``, registered in the PACS as modality ``ae_title.lower()`` (that may
    store there if ``allow_store``); stops it after the test."""
    nodes = []

    def start(ae_title: str, allow_store: bool = True, **settings) -> Node:
        node = Node(tmp_path / ae_title.lower(), model, pacs.port, ae_title, **settings).start()
        pacs.add_modality(ae_title.lower(), ae_title, node.port, allow_store)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def one_new_series(pacs: Orthanc, study) -> list[pydicom.Dataset]:
    """The study's only new series in the PACS, complete, as datasets in plane order."""
    (series,) = pacs.new_series(study)
    datasets = sorted(pacs.datasets(series), key=lambda ds: int(ds.InstanceNumber))
    assert len(datasets) == study.slices
    return datasets


def settled(node: Node) -> dict:
    """The node's status once nothing is pending (a series is whole in the PACS a moment before its job is done)."""

    def status() -> dict | None:
        found = node.status()
        return None if any(found[state] for state in ("incoming", "queue", "outbox")) else found

    return node.wait_for(status, 60, "nothing pending")


def job_of(status: dict, state: str, study) -> dict:
    (job,) = [job for job in status[state] if job["study"] == study.uid]
    return job


def test_round_trip_synthesis_denoising_partial_and_failed(tmp_path, volumes, pacs, start_node):
    """Three studies in one go: an MR study with a SEG (C-MOVE: synthesis), an MR study with a broken second series
    (denoising of the good one, the problem recorded) and a SEG without its source (failed, with the reason).
    The new series are in the same studies in the PACS with the attributes of a derived series; the status
    command lists what happened; resending a done study gives the PACS the same instances again, not a copy."""
    node = start_node("MOTFM")
    seg_study = write_study(tmp_path / "a", volumes, seg=True)
    mr_study = write_study(tmp_path / "b", volumes, seg=False)
    broken = pydicom.dcmread(mr_study.files[0])
    broken.SeriesInstanceUID, broken.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    broken.PixelData = broken.PixelData[:100]  # a transfer cut short: the app cannot decode it
    broken.save_as(tmp_path / "b" / "broken.dcm")
    mr_study.files.append(tmp_path / "b" / "broken.dcm")
    mr_study.series.add(broken.SeriesInstanceUID)
    orphan = write_study(tmp_path / "c", volumes, seg=True)
    orphan.files = [f for f in orphan.files if f.name == "seg.dcm"]  # its source series never sent
    for study in (seg_study, mr_study, orphan):
        pacs.upload(study)

    assert move(pacs, seg_study, node.ae_title) == 0x0000
    pacs.send("motfm", [mr_study, orphan], synchronous=True)
    node.wait_for(lambda: complete(pacs.new_series(seg_study), seg_study), 240, "the synthesized series")
    node.wait_for(lambda: complete(pacs.new_series(mr_study), mr_study), 60, "the denoised series")
    node.wait_for(lambda: node.status()["failed"], 60, "the failed study")

    source = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, seg_study.files)}
    seg = next(ds for ds in source.values() if ds.Modality == "SEG")
    synthesized = one_new_series(pacs, seg_study)
    for ds in synthesized:
        src = source[ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert (ds.StudyInstanceUID, ds.PatientID, ds.FrameOfReferenceUID) == (
            src.StudyInstanceUID,
            src.PatientID,
            src.FrameOfReferenceUID,
        )
        assert ds.SeriesInstanceUID not in seg_study.series and ds.SOPInstanceUID not in source
        assert ds.SeriesNumber == src.SeriesNumber + 1000 and ds.Modality == "MR"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"] and ds.SyntheticData == "YES"
        assert ds.SeriesDescription.startswith("SYNTHETIC - NOT ACQUIRED (MOTFM)")
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert ds.Manufacturer == "MOTFM project"
        assert str(ds.PatientName) == "Müller^Hans" and ds.SpecificCharacterSet == "ISO_IR 192"
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], [float(v) for v in src.ImagePositionPatient], atol=1e-3
        )
    denoised = one_new_series(pacs, mr_study)
    assert denoised[0].SeriesDescription.startswith("AI DENOISED (MOTFM)") and "SyntheticData" not in denoised[0]
    assert denoised[0].StudyInstanceUID == mr_study.uid
    assert denoised[0].ReferencedSeriesSequence[0].SeriesInstanceUID != broken.SeriesInstanceUID
    assert pacs.new_series(orphan) == []

    status = settled(node)
    assert job_of(status, "done", seg_study)["series"][0]["instances"] == seg_study.slices
    (problem,) = job_of(status, "done", mr_study)["problems"]
    assert f"{broken.SOPInstanceUID}.dcm" in problem and "pixel data" in problem
    error = job_of(status, "failed", orphan)["error"]
    orphan_seg = pydicom.dcmread(orphan.files[0]).SOPInstanceUID
    assert f"{orphan_seg}.dcm: its source series" in error and "is not in the input" in error
    text = node.command("status")
    assert "0 pending, 2 done, 1 failed" in text and f"FAILED: {error}" in text

    # an operator resends a done study: the PACS gets the same instances again, still one series
    job = job_of(status, "done", seg_study)["job"]
    assert "done -> outbox" in node.command("retry", job)
    node.wait_for(lambda: node.log().count(f"{seg_study.uid}: {seg_study.slices} instances sent") == 2, 60, "resend")
    assert [ds.SOPInstanceUID for ds in one_new_series(pacs, seg_study)] == [ds.SOPInstanceUID for ds in synthesized]


def test_damaged_files_beside_an_intact_series(tmp_path, volumes, pacs, start_node, monkeypatch):
    """A study sent to the node over C-STORE as its files are (seeded): an intact MR series, and a second series
    whose files but one are damaged in their data set (the file meta does not travel over DICOM): an unknown value
    representation, a length past the end, the pixels cut short. The node goes on; it stores each damaged instance,
    or refuses it (Cannot Understand) naming it in its log; the app runs and the intact series' result reaches the
    PACS whole; each damaged instance is named in the node's log or in its job's problems."""
    node = start_node("MOTFMD")
    header, grid = study_header(), {"shape": (32, 32), "spacing": 6.0}
    intact = write_mr_series(tmp_path / "intact", volumes[0], header, 4, **grid)
    source = write_mr_series(tmp_path / "source", volumes[0], header, 4, centre=(0, 0, 0), **grid)
    rng, damaged = np.random.default_rng(35), {}
    for kind, ds in zip(("data_vr", "wrong_length", "pixels_cut"), source):
        path = tmp_path / "damaged" / f"{kind}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(damage(Path(ds.filename).read_bytes(), kind, rng))
        damaged[str(ds.SOPInstanceUID)] = path
    files = [Path(ds.filename) for ds in (*intact, source[-1])] + list(damaged.values())
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the files' bytes as they are
    statuses = dict(zip(files, store(node.port, node.ae_title, files)))
    assert all(statuses[file] == SUCCESS for file in files[:5])
    assert all(statuses[file] in (SUCCESS, CANNOT_UNDERSTAND) for file in damaged.values())

    study = Study(header.StudyInstanceUID, files, {intact[0].SeriesInstanceUID, source[0].SeriesInstanceUID}, 4, False)
    node.wait_for(lambda: complete(pacs.new_series(study), study), 240, "the intact series' result")
    (series,) = pacs.new_series(study)
    results = pacs.datasets(series)
    sources = {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in results}
    assert sources == {ds.SOPInstanceUID for ds in intact}
    (job,) = settled(node)["done"]
    assert job["series"] == [{"uid": results[0].SeriesInstanceUID, "instances": 4}]
    log = node.log()
    for uid, file in damaged.items():
        refused = f"instance {uid} from {TESTER_AET} at 127.0.0.1 refused: cannot understand it"
        named = [p for p in job["problems"] if f"{uid}.dcm: " in p]
        assert refused in log if statuses[file] == CANNOT_UNDERSTAND else named, (file.name, job["problems"])
    assert node.process.poll() is None and "unexpected error" not in log


def test_kill_while_receiving_and_while_processing(tmp_path, volumes, pacs, start_node):
    """kill -9 in the middle of receiving a study, then in the middle of processing it: after each restart the node
    resumes; the study is finished and its new series is in the PACS once."""
    node = start_node("MOTFMK")
    study = write_study(tmp_path / "study", volumes, seg=True)
    pacs.upload(study)

    # receiving: the node dies after half the study, its association still open; the PACS sends the whole study
    # again once it is back
    half = study.files[: len(study.files) // 2]
    assoc = associate(node.port, node.ae_title, contexts={MRImageStorage: [ExplicitVRLittleEndian]})
    assert [assoc.send_c_store(f).Status for f in half] == [0x0000] * len(half)
    node.kill()
    assoc.abort()
    incoming = node.folder / "spool" / "incoming" / study.uid / "input"
    assert len(list(incoming.iterdir())) == len(half)
    node.start()
    pacs.send("motfmk", [study], synchronous=True)

    # processing: the node dies while the deploy app runs; the app dies with it
    node.wait_for(lambda: app_runs(node.folder / "spool"), 120, "a run of the deploy app")
    queued = node.status()["queue"]
    assert [job["instances"] for job in queued] == [len(study.files)]
    node.kill()
    node.wait_for(lambda: not app_runs(node.folder / "spool"), 5, "the app to end with the node")
    node.start()

    node.wait_for(lambda: complete(pacs.new_series(study), study), 240, "the new series after the restarts")
    one_new_series(pacs, study)
    status = settled(node)
    assert [job["job"] for job in status["done"]] == [queued[0]["job"]] and status["failed"] == []
    assert node.log().count(f"{study.uid}: {study.slices} instances sent") == 1


def test_destination_refusing_for_a_while(tmp_path, volumes, pacs, start_node):
    """The PACS refuses the node's C-STOREs: the node retries with backoff and keeps the result, across a kill -9;
    once the PACS accepts, the result arrives, once."""
    node = start_node("MOTFMR", allow_store=False)
    study = write_study(tmp_path / "study", volumes, seg=False)
    pacs.upload(study)
    pacs.send("motfmr", [study], synchronous=True)

    node.wait_for(lambda: any(j.get("attempts", 0) >= 2 for j in node.status()["outbox"]), 240, "2 refused sends")
    assert "not stored: no answer" in node.status()["outbox"][0]["last_error"]
    assert pacs.new_series(study) == []
    node.kill()
    node.start()
    pacs.add_modality("motfmr", node.ae_title, node.port, allow_store=True)

    node.wait_for(lambda: complete(pacs.new_series(study), study), 60, "the result once the PACS accepts")
    one_new_series(pacs, study)
    (done,) = settled(node)["done"]
    assert done["attempts"] >= 3 and "last_error" not in done


def test_burst_of_20_studies(tmp_path, volumes, pacs, start_node):
    """20 studies sent at once (one store job of the PACS): every one is processed and comes back, none lost.
    The timings are printed (pytest -s); bench/pacs_burst.py measures them for the docs."""
    node = start_node("MOTFMB")
    studies = [write_study(tmp_path / f"s{k}", volumes, seg=k % 2 == 0, slices=3) for k in range(20)]
    for study in studies:
        pacs.upload(study)

    timings = burst(pacs, node, "motfmb", studies, timeout=400)
    print(f"\nburst of 20 studies: {timings}")
    for study in studies:
        one_new_series(pacs, study)
    status = settled(node)
    assert len(status["done"]) == 20 and status["failed"] == []
    assert sorted(job["study"] for job in status["done"]) == sorted(s.uid for s in studies)
