"""A real PACS (Orthanc) and the DICOM node, each a process on loopback with its own configuration and storage in a
temporary folder (no system service), and a burst of studies between them: for the PACS tests and the burst
benchmark (bench/pacs_burst.py)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

from . import ROOT
from .studies import Study

PACS_AET, TESTER_AET = "ORTHANC", "TESTER"  # the PACS, and the tests when they act as a DICOM client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, log: Callable[[], str] = str) -> Any:
    """Polls ``condition`` until it returns something true, which is returned; fails after ``timeout`` seconds
    naming ``what``, with the end of ``log()``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{log()[-4000:]}")


class Orthanc:
    """Orthanc on loopback ports, its configuration, database and log in ``folder``. Only the modalities the
    tests register (from 127.0.0.1) may use its DICOM services; ``tls`` (certificate, private_key,
    ca_certificates) serves DICOM over TLS."""

    def __init__(self, folder: Path, tls: dict[str, str] | None = None) -> None:
        binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise RuntimeError("Orthanc is not installed (Debian: apt-get install orthanc): the PACS tests need it")
        self.folder, self.http, self.port = folder, free_port(), free_port()
        config = {
            "Name": "MOTFM test PACS",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http,
            "DicomPort": self.port,
            "DicomAet": PACS_AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"tester": {"AET": TESTER_AET, "Host": "127.0.0.1", "Port": free_port()}},
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "SaveJobs": False,
            "Plugins": [],
        }
        if tls:
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": tls["certificate"],
                "DicomTlsPrivateKey": tls["private_key"],
                "DicomTlsTrustedCertificates": tls["ca_certificates"],
                "DicomTlsRemoteCertificateRequired": True,
            }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.log_file = folder / "orthanc.log"
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=log)
        wait_for(self.alive, 60, "Orthanc to start", self.log)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def alive(self) -> bool:
        try:
            return self.get("/system")["DicomAet"] == PACS_AET
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            content = response.read()
        return json.loads(content) if response.headers.get_content_type() == "application/json" else content

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, study: Study) -> None:
        for file in study.files:
            self.request("POST", "/instances", file.read_bytes())

    def add_modality(self, name: str, ae_title: str, port: int, allow_store: bool = True, tls: bool = False) -> None:
        """Registers (or changes) a DICOM node Orthanc sends to and, if ``allow_store``, accepts instances from."""
        modality = {"AET": ae_title, "Host": "127.0.0.1", "Port": port, "AllowStore": allow_store, "UseDicomTls": tls}
        self.request("PUT", f"/modalities/{name}", modality)

    def study_id(self, uid: str) -> str:
        (found,) = self.request("POST", "/tools/lookup", uid.encode())
        return found["ID"]

    def send(self, modality: str, studies: list[Study], synchronous: bool = False) -> Any:
        """Orthanc's "send to modality" (REST): one C-STORE job for all the studies."""
        resources = [self.study_id(s.uid) for s in studies]
        return self.request(
            "POST", f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": synchronous}
        )

    def new_series(self, study: Study) -> list[dict]:
        """The series of the study that were not sent to Orthanc with it (the node's results)."""
        try:
            series = self.get(f"/studies/{self.study_id(study.uid)}/series")
        except (OSError, ValueError):
            return []
        return [s for s in series if s["MainDicomTags"]["SeriesInstanceUID"] not in study.series]

    def datasets(self, series: dict) -> list[pydicom.Dataset]:
        """The instances of a series (as Orthanc lists it), read back from Orthanc."""
        return [pydicom.dcmread(BytesIO(self.get(f"/instances/{i}/file"))) for i in series["Instances"]]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class Node:
    """The node (``python -m pacs_node serve``) as a process, its configuration file, spool and log in ``folder``,
    sending to the PACS at ``destination`` (a port on loopback). ``settings`` are configuration keys (see
    pacs_node/config.py), over test defaults."""

    def __init__(self, folder: Path, model: Path, destination: int, ae_title: str, **settings: Any) -> None:
        self.folder, self.ae_title, self.port = folder, ae_title, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "ae_title": ae_title,
            "host": "127.0.0.1",
            "port": self.port,
            "spool": str(folder / "spool"),
            "model": str(model),
            "callers": {PACS_AET: "127.0.0.1", TESTER_AET: None},
            "destination": {"ae_title": PACS_AET, "host": "127.0.0.1", "port": destination},
            "quiet_seconds": 2,
            "retry_seconds": 1,
            "retry_max_seconds": 2,
            "app_env": {"OMP_NUM_THREADS": "1"},
            **settings,
        }
        self.config = folder / "node.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.log_file, self.process, self.starts = folder / "node.log", None, 0

    def start(self, prefix: Sequence[str] = ()) -> Node:
        """Starts the node (``PREFIX python -m pacs_node serve``) and waits until it listens."""
        self.starts += 1
        with open(self.log_file, "ab") as log:
            command = [*prefix, sys.executable, "-m", "pacs_node", "serve", "--config", str(self.config)]
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
        self.wait_for(lambda: self.log().count("listening on") == self.starts, 60, "the node to listen")
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(condition, timeout, what, self.log)

    def command(self, *args: str) -> str:
        """Runs ``python -m pacs_node ARGS --config ...``; returns its output."""
        command = [sys.executable, "-m", "pacs_node", *args, "--config", str(self.config)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
        return result.stdout

    def status(self) -> dict[str, list[dict]]:
        """The spool's jobs by state (the status command's JSON, in this process: tests poll it)."""
        from pacs_node.__main__ import Commands

        return json.loads(Commands().status(str(self.config), as_json=True))

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


def complete(series: list[dict], study: Study) -> bool:
    """Whether ``series`` (the study's new series in the PACS) hold one whole series: one instance per plane."""
    return any(len(s["Instances"]) == study.slices for s in series)


def burst(pacs: Orthanc, node: Node, modality: str, studies: list[Study], timeout: float) -> dict[str, Any]:
    """Sends ``studies`` from the PACS to the node at once (one store job) and waits until each has one new series
    in the PACS; returns the timings."""
    start = time.monotonic()
    pacs.send(modality, studies)
    arrived: dict[str, float] = {}

    def all_arrived() -> bool:
        for study in studies:
            if study.uid not in arrived and complete(pacs.new_series(study), study):
                arrived[study.uid] = time.monotonic() - start
        return len(arrived) == len(studies)

    node.wait_for(all_arrived, timeout, f"the new series of {len(studies)} studies in the PACS")
    total = max(arrived.values())
    return {
        "studies": len(studies),
        "instances_sent": sum(len(s.files) for s in studies),
        "total_seconds": round(total, 1),
        "seconds_per_study": round(total / len(studies), 2),
        "first_result_seconds": round(min(arrived.values()), 1),
        "app_runs": node.log().count("processing a batch"),
    }
