"""The production path's files (deploy_app/workflow/): the Workflow Manager's workflow definition checked against the
rules its validator and Docker plug-in apply, and its routing key checked on real DICOM files."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from pydicom import dcmread

from motfm_deploy.jobs import TASKS
from testbed import ROOT
from testbed.studies import load_volumes, write_study

WORKFLOW = ROOT / "deploy_app" / "workflow"
DOCKER_ARGS = ("server_url", "entrypoint", "command", "container_image", "temp_storage_container_path")
TASK_OF = {"synthesis": "synthesize", "denoising": "denoise"}


@pytest.fixture(scope="module")
def workflow() -> dict:
    return json.loads((WORKFLOW / "motfm-workflow.json").read_text())


def test_workflow_definition(workflow):
    """Names within the Workflow Manager's limits; the router's destinations run the MAP with the task forced;
    each Docker task mounts its artifacts at paths its args give and passes them to the app; each export task
    exports its own task's output to a destination of the workflow; no two tasks share a destination."""
    tasks = {task["id"]: task for task in workflow["tasks"]}
    gateway = workflow["informatics_gateway"]
    assert len(workflow["name"]) <= 15 and len(gateway["ae_title"]) <= 15
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", task_id) for task_id in tasks)
    router = workflow["tasks"][0]
    assert router["type"] == "router" and [d["name"] for d in router["task_destinations"]] == list(TASK_OF)
    destinations = [d["name"] for task in workflow["tasks"] for d in task.get("task_destinations", [])]
    assert sorted(destinations) == sorted(set(tasks) - {router["id"]})  # each task reached, once
    for name, task in TASK_OF.items():
        docker = tasks[name]
        args = docker["args"]
        assert docker["type"] == "docker" and all(args.get(key) for key in DOCKER_ARGS)
        assert args["env_MOTFM_TASK"] == task and task in TASKS
        assert args["command"] == "python3 -u /opt/holoscan/app" and (ROOT / "deploy_app" / "__main__.py").is_file()
        (source,) = docker["artifacts"]["input"]
        (output,) = docker["artifacts"]["output"]
        assert source["value"] == "{{ context.input.dicom }}"
        assert {source["name"], output["name"]} == {"env_HOLOSCAN_INPUT_PATH", "env_HOLOSCAN_OUTPUT_PATH"}
        assert args["env_HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models/"
        (export_name,) = [d["name"] for d in docker["task_destinations"]]
        export = tasks[export_name]
        assert export["type"] == "export"
        assert {d["name"] for d in export["export_destinations"]} <= set(gateway["export_destinations"])
        (exported,) = export["artifacts"]["input"]
        assert exported["value"] == f"{{{{ context.executions.{name}.artifacts.{output['name']} }}}}"


def test_routing_key_is_set_in_seg_instances_only(tmp_path, data_dir, workflow):
    """The router reads Segmentation Type (0062,0001) from the Informatics Gateway's DICOM JSON of the study's
    instances (the first that has it): it is set in a DICOM SEG and in no image instance."""
    conditions = {d["name"]: d["conditions"] for d in workflow["tasks"][0]["task_destinations"]}
    assert all("context.dicom.series.any('0062','0001')" in c for cs in conditions.values() for c in cs)
    volumes = load_volumes(data_dir)
    for seg in (True, False):
        study = write_study(tmp_path / str(seg), volumes, seg=seg)
        values = [dcmread(f).to_json_dict().get("00620001", {}).get("Value") for f in study.files]
        assert [v for v in values if v] == ([["BINARY"]] if seg else [])
    assert "== 'BINARY'" in conditions["synthesis"][0] and conditions["denoising"] == [
        "{{ context.dicom.series.any('0062','0001') }} == NULL"
    ]


def test_configuration_files():
    """The Informatics Gateway settings write the DICOM JSON the router reads; the registration script parses."""
    settings = json.loads((WORKFLOW / "informatics-gateway.json").read_text())["InformaticsGateway"]["dicom"]
    assert settings["writeDicomJson"] != "None" and settings["scp"]["rejectUnknownSources"] is True
    assert subprocess.run(["bash", "-n", str(WORKFLOW / "configure.sh")], check=False).returncode == 0
    script = (WORKFLOW / "configure.sh").read_text()
    assert "/config/source" in script and "/config/destination" in script and '"aeTitle": "MOTFM"' in script
