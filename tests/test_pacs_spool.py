"""The node's parts that need no network, on a real file system: the spool's states across restarts, its limits and
its refusal of unsafe UIDs; the configuration file; reading the deploy app's account of a run."""

from __future__ import annotations

import json
import time

import pytest
from deploy_fixtures import ROOT

from pacs_node.config import NodeConfig
from pacs_node.processor import Run
from pacs_node.spool import Spool, StudyTooLarge

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
    (job,) = restarted.seal_quiet()
    assert job.state == "queue" and job.study == STUDY and job.record["instances"] == 2
    assert sorted(p.name for p in job.files("input")) == ["1.1.dcm", "1.2.dcm"]
    assert restarted.jobs("incoming") == [] and restarted.find(job.name) == job


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
    sealed = {job.study: job for job in restarted.seal_quiet()}
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
    (job,) = spool.seal_quiet()
    job = spool.move(job, "outbox", series=[{"uid": "9.9", "instances": 1}])
    record = spool.update(job, attempts=1, last_error="refused")
    assert record["series"] == [{"uid": "9.9", "instances": 1}] and record["attempts"] == 1
    assert "last_error" not in spool.update(job, last_error=None)
    spool.remove(job)
    assert all(spool.jobs(state) == [] for state in ("incoming", "queue", "outbox", "done", "failed"))
    with pytest.raises(ValueError, match="no job"):
        spool.find(job.name)


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


def test_run_account():
    """What the node reads from a run of the deploy app: its problems (naming files), and how it ended."""
    log = "\n".join(
        [
            "[2026-11-25 23:03:38,711] [ERROR] (motfm) - 2 input problems (1 series written):",
            "- /spool/work/run-1/in/JOB_A/1.2.dcm: not a usable DICOM instance",
            "- /spool/work/run-1/in/JOB_B/seg.dcm: its source series ['1.2'] is not in the input",
            "/venv/lib/python3.11/site-packages/pydicom/valuerep.py:440: UserWarning: value length",
        ]
    )
    run = Run(1, log, 12.0)
    assert run.crashed is None and len(run.problems) == 2 and run.problems[1].startswith("/spool/work/run-1/in/JOB_B")
    assert run.last_words.endswith("2 input problems (1 series written):")
    assert Run(-9, "", 1.0).crashed == "was killed by SIGKILL" and Run(None, "", 1.0).crashed.startswith("was stop")
    assert Run(134, "Fatal Python error: Aborted", 1.0).crashed == "exited with status 134"
    assert Run(0, "", 1.0).problems == [] and Run(0, "", 1.0).last_words == "(no output)"
    assert run.failure(run.problems[1:]) == run.problems[1]  # a study's own problems say why it has no series
    assert run.failure([]).startswith("the deploy app wrote no series for it: [2026-11-25 23:03:38,711] [ERROR]")
    assert Run(-11, "Segmentation fault", 1.0).failure([]) == "the deploy app was killed by SIGSEGV: Segmentation fault"
