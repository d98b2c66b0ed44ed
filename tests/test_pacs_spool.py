"""The node's parts that need no network, on a real file system: the spool's states across restarts, its limits and
its refusal of unsafe UIDs; the configuration file; reading the deploy app's account of a run."""

from __future__ import annotations

import json
import time

import pytest

from pacs_node.config import NodeConfig
from pacs_node.processor import Run, read_report
from pacs_node.spool import Spool, StudyTooLarge
from testbed import ROOT

STUDY, OTHER = "1.2.3.4", "1.2.3.5"


def test_a_study_is_complete_after_its_quiet_time_also_across_a_restart(tmp_path):
    spool = Spool(tmp_path, quiet_seconds=0.3)
    spool.store(STUDY, "1.1", b"first")
    time.sleep(0.35)
    spool.store(STUDY, "1.2", b"second")  # a new instance starts the quiet time again
    assert spool.seal_quiet() == []
    time.sleep(0.35)
    restarted = Spool(tmp_path, quiet_seconds=0.3)  # a restart gives the sender a whole quiet time again
    assert restarted.seal_quiet() == []
    time.sleep(0.35)
    (study,) = restarted.seal_quiet()
    assert study.state == "queue" and study.uid == STUDY and study.record["instances"] == 2
    assert sorted(p.name for p in study.files("input")) == ["1.1.dcm", "1.2.dcm"]
    assert restarted.studies("incoming") == [] and restarted.find(study.name) == study


@pytest.mark.parametrize("uid", ["../../etc", "1.2.x", "", ".", "1..2", "1." + "2" * 63])
def test_unsafe_uids_are_refused(tmp_path, uid):
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="invalid Study Instance UID"):
        spool.store(uid, "1.1", b"data")
    with pytest.raises(ValueError, match="invalid SOP Instance UID"):
        spool.store(STUDY, uid, b"data")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_study_size_limit_counts_each_instance_once_and_survives_a_restart(tmp_path):
    spool = Spool(tmp_path, quiet_seconds=0.1, max_study_bytes=250)
    spool.store(STUDY, "1.1", b"x" * 100)
    spool.store(STUDY, "1.1", b"x" * 100)  # received again (a sender's retry): replaces the first copy
    spool.store(OTHER, "2.1", b"x" * 200)  # each study has its own limit
    restarted = Spool(tmp_path, quiet_seconds=0.1, max_study_bytes=250)
    restarted.store(STUDY, "1.2", b"x" * 100)
    with pytest.raises(StudyTooLarge, match="larger than max_study_mb"):
        restarted.store(STUDY, "1.3", b"x" * 100)
    with pytest.raises(StudyTooLarge):  # once refused, the study takes nothing more
        restarted.store(STUDY, "1.4", b"x")
    time.sleep(0.15)
    sealed = {study.uid: study for study in restarted.seal_quiet()}
    assert sealed[STUDY].state == "failed" and "larger than max_study_mb" in sealed[STUDY].record["error"]
    assert sealed[STUDY].record["instances"] == 2 and sealed[OTHER].state == "queue"


def test_one_node_per_spool(tmp_path):
    claim = Spool(tmp_path).claim()
    with pytest.raises(ValueError, match="served by another node already"):
        Spool(tmp_path).claim()
    claim.close()  # as when the node's process ends
    Spool(tmp_path).claim().close()


def test_moves_record_and_remove(tmp_path):
    spool = Spool(tmp_path, quiet_seconds=0.01)
    spool.store(STUDY, "1.1", b"data")
    time.sleep(0.02)
    (study,) = spool.seal_quiet()
    study = spool.move(study, "outbox", series=[{"uid": "9.9", "instances": 1}])
    record = spool.update(study, attempts=1, last_error="refused")
    assert record["series"] == [{"uid": "9.9", "instances": 1}] and record["attempts"] == 1
    assert "last_error" not in spool.update(study, last_error=None)
    spool.remove(study)
    assert all(spool.studies(state) == [] for state in ("incoming", "queue", "outbox", "done", "failed"))
    with pytest.raises(ValueError, match="no job"):
        spool.find(study.name)


def test_configuration(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").touch()
    (tmp_path / "models").mkdir()
    values = {
        "spool": "spool",
        "model": "models",
        "app": "app",
        "callers": {"PACS": "10.0.0.1", "WORKSTATION": None},
        "destination": {"ae_title": "PACS", "host": "10.0.0.1", "port": 104},
    }
    path = tmp_path / "node.json"
    path.write_text(json.dumps(values))
    config = NodeConfig.read(path, port=11113)
    assert (config.spool, config.model, config.port) == (tmp_path / "spool", tmp_path / "models", 11113)
    assert str(config.destination) == "PACS@10.0.0.1:104" and config.quiet_seconds == 30
    assert config.allows("PACS", "10.0.0.1") and config.allows("WORKSTATION ", "10.9.9.9")
    assert not config.allows("PACS", "10.0.0.2") and not config.allows("OTHER", "10.0.0.1")
    with pytest.raises(ValueError, match="unknown keys \\['quiet'\\]"):
        NodeConfig.read(path, quiet=3)
    with pytest.raises(ValueError, match="ae_title must be an AE title"):
        NodeConfig.read(path, ae_title="A_VERY_LONG_AE_TITLE")
    with pytest.raises(ValueError, match="callers must name at least one"):
        NodeConfig.read(path, callers={})
    with pytest.raises(ValueError, match="is not the deploy app's folder"):
        NodeConfig.read(path, app=str(tmp_path))
    with pytest.raises(ValueError, match="model .*nothing does not exist"):
        NodeConfig.read(path, model="nothing")
    with pytest.raises(ValueError, match="app_env values must be strings"):
        NodeConfig.read(path, app_env={"OMP_NUM_THREADS": 4})
    example = NodeConfig.read(ROOT / "pacs_node" / "node.example.json", model=str(tmp_path), spool=str(tmp_path))
    assert example.destination.port == 104 and example.callers["WORKSTATION1"] is None


def test_run_account(tmp_path):
    """What the node reads from a run of the deploy app: its run report (the series of each study, the problems
    whose files lie in a study's input), and how the run ended (a run without its report ended abnormally)."""
    work = tmp_path / "run-1"
    report = {
        "exit_status": 1,
        "error": "2 input problems (1 series written): ...",
        "series": [
            {
                "series_instance_uid": "9.1",
                "study_instance_uid": "1.2.3",
                "path": str(work / "out" / "9.1"),
                "instances": 4,
                "task": "denoise",
                "source": "MR series",
            }
        ],
        "problems": [
            {"files": [str(work / "in" / "JOB_A" / "1.2.dcm")], "message": "/.../JOB_A/1.2.dcm: not usable"},
            {
                "files": [str(work / "in" / "JOB_B" / "seg.dcm"), str(work / "in" / "JOB_B" / "mr.dcm")],
                "message": "/.../JOB_B/seg.dcm: its source series ['1.2'] is not in the input",
            },
        ],
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    run = Run(1, "[ERROR] (motfm) - 2 input problems (1 series written):", 12.0, read_report(tmp_path / "report.json"))
    assert run.crashed is None and [s["instances"] for s in run.series("1.2.3")] == [4] and run.series("1.2.4") == []
    assert run.problems(work / "in" / "JOB_B") == [report["problems"][1]["message"]]
    assert run.problems(work / "in" / "JOB") == []  # a folder whose name starts another's holds none of its files
    assert run.failure(run.problems(work / "in" / "JOB_B")) == report["problems"][1]["message"]
    assert run.failure([]) == f"the deploy app wrote no series for it: {report['error']}"
    (tmp_path / "torn.json").write_text(json.dumps(report)[:50])
    no_report = "exited with status 1 without its run report"
    for missing in (read_report(tmp_path / "none.json"), read_report(tmp_path / "torn.json")):
        assert Run(1, "Traceback ...\nMemoryError", 1.0, missing).crashed == no_report
    assert Run(0, "", 1.0, report).crashed == "exited with status 0 without its run report"  # another run's report
    assert Run(-9, "", 1.0, None).crashed == "was killed by SIGKILL"
    assert Run(None, "", 1.0, None).crashed == "was stopped after the timeout"
    assert Run(134, "Fatal Python error: Aborted", 1.0, None).crashed == "exited with status 134"
    killed = Run(-11, "Segmentation fault", 1.0, None)
    assert killed.failure([]) == "the deploy app was killed by SIGSEGV: Segmentation fault"
