"""The deploy app as a container: its requirements in a clean environment, and the CPU-only image with the MONAI
Application Package layout (``deploy_app/package.sh image``: debootstrap base, local wheelhouse, no network) run with
no network on real DICOM studies, against ``python deploy_app`` on the same input.

package.sh installs docker.io and debootstrap when they are missing and starts a Docker daemon of its own (as root);
the image is built once per set of inputs and reused. Where it cannot be built (package.sh exits 77: no Docker
daemon and not root, no debootstrap or Debian mirror, no CPU torch wheel...), the container tests are skipped with
the reason. They are marked ``container`` and left out of the suite;
``tests/run.sh`` runs them after it, or: ``python -m pytest -m container tests/test_container.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from testbed import ROOT
from testbed.app import APP, run_app
from testbed.studies import study_header, write_mr_series, write_seg

pytestmark = pytest.mark.container

PACKAGE = APP / "package.sh"
CANNOT_BUILD = 77  # package.sh: the image cannot be built here
LOADER = "/lib64/ld-linux-x86-64.so.2"  # the dynamic loader, run directly to keep it from /etc/ld.so.cache
# modules of the project's training, test and PACS tools, which the application image must not carry
NOT_AT_RUN_TIME = ("pytest", "ruff", "nilearn", "ignite", "tensorboard", "mlflow", "ot", "pynetdicom")


def package(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``bash deploy_app/package.sh ARGS`` with this Python; returns the finished process."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(PACKAGE), *args], env=env, capture_output=True, text=True, timeout=1800, check=False
    )


def last_line(done: subprocess.CompletedProcess) -> str:
    """The last line a successful package.sh printed (its result); skips the test where the image cannot be built."""
    if done.returncode == CANNOT_BUILD:
        pytest.skip(f"{done.stderr.strip()}; as root: python -m pytest -m container tests/test_container.py")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_requirements_import_the_app_in_a_fresh_venv(tmp_path):
    """deploy_app/requirements.txt alone, in a new venv, imports the app with the machine's CUDA out of the loader's
    reach (it is in /etc/ld.so.cache): with only the pip CUDA runtime's folder on the library path."""
    wheels = last_line(package("wheelhouse"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", wheels]
    subprocess.run([*install, "-r", str(APP / "requirements.txt")], check=True, timeout=1200)
    (cudart,) = venv.glob("lib/python*/site-packages/nvidia/cu13/lib")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    code = f"import sys; sys.path.insert(0, {str(APP)!r}); import app, torch; print(torch.version.cuda)"

    def run(*loader_args: str) -> subprocess.CompletedProcess:
        command = [LOADER, "--inhibit-cache", *loader_args, python, "-c", code]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)

    unreachable = run()
    assert unreachable.returncode != 0 and "libcudart.so.13: cannot open shared object file" in unreachable.stderr
    found = run("--library-path", str(cudart))
    assert found.returncode == 0, found.stderr[-3000:]
    assert found.stdout.split() == ["None"]  # a CPU build of torch


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict]:
    """The environment of docker commands: a daemon that answers, started by package.sh (and stopped after the
    tests) when none did."""
    settings = dict(item.split("=", 1) for item in last_line(package("dockerd")).split())
    env = {**os.environ, **({"DOCKER_HOST": settings["DOCKER_HOST"]} if settings["DOCKER_HOST"] else {})}
    yield env
    if settings["DOCKERD_PID"]:
        pid = int(settings["DOCKERD_PID"])
        os.kill(pid, signal.SIGTERM)
        for _ in range(600):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def image(docker_env) -> str:
    """The CPU image's tag (built now, or reused when its inputs are unchanged)."""
    return last_line(package("image", env=docker_env))


def docker(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Runs ``docker ARGS`` against the test's daemon."""
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=900, check=False)


def run_image(
    env: dict, image: str, input_folder: Path, output_folder: Path, *options: str, output_mode: str = "rw"
) -> subprocess.CompletedProcess:
    """Runs the image with no network, the input mounted read-only at the package's input path and the output at
    its output path (writable by the package's user), one CPU thread."""
    output_folder.mkdir(parents=True, exist_ok=True)
    output_folder.chmod(0o777)
    mounts = ["-v", f"{input_folder}:/var/holoscan/input:ro"]
    mounts += ["-v", f"{output_folder}:/var/holoscan/output:{output_mode}"]
    return docker(env, "run", "--rm", "--network", "none", "-e", "OMP_NUM_THREADS=1", *mounts, *options, image)


def series_by_study(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """The output folder's series by their study (one series per study here), instances in file order."""
    series = [[pydicom.dcmread(f) for f in sorted(d.iterdir())] for d in sorted(folder.iterdir()) if d.is_dir()]
    return {instances[0].StudyInstanceUID: instances for instances in series}


@pytest.fixture(scope="module")
def studies(tmp_path_factory, volumes, image, docker_env) -> SimpleNamespace:
    """Two studies in one input: an MR series with a DICOM SEG (synthesis) and an MR series alone (denoising), run
    through the image and through ``python deploy_app`` with the shipped bundle."""
    base = tmp_path_factory.mktemp("container")
    source = write_mr_series(base / "in" / "seg_study" / "t1", volumes[0], study_header(), num_slices=6)
    write_seg(base / "in" / "seg_study" / "seg.dcm", source, volumes[1])
    plain = write_mr_series(base / "in" / "image_study", volumes[0], study_header("Doe^John", invalid=False), 4)
    container = run_image(docker_env, image, base / "in", base / "container")
    host = run_app(["-i", str(base / "in"), "-o", str(base / "host"), "-m", str(ROOT / "bundle")])
    return SimpleNamespace(base=base, container=container, host=host, seg_study=source[0].StudyInstanceUID, plain=plain)


def test_image_writes_what_the_app_writes(studies):
    """Exit 0; one series per study, pixel for pixel those of ``python deploy_app``; the synthesized series is
    marked Synthetic Data YES, the denoised one is not."""
    assert studies.container.returncode == 0, studies.container.stderr[-3000:]
    assert studies.host.returncode == 0, studies.host.stderr[-3000:]
    container, host = series_by_study(studies.base / "container"), series_by_study(studies.base / "host")
    assert set(container) == set(host) == {studies.seg_study, studies.plain[0].StudyInstanceUID}
    for study, instances in container.items():
        assert len(instances) == len(host[study])
        for ours, theirs in zip(instances, host[study]):
            assert np.array_equal(ours.pixel_array, theirs.pixel_array)
            assert ours.SeriesDescription == theirs.SeriesDescription
    assert {ds.SyntheticData for ds in container[studies.seg_study]} == {"YES"}
    assert len(container[studies.seg_study]) == 6
    denoised = container[studies.plain[0].StudyInstanceUID]
    assert len(denoised) == 4 and not any("SyntheticData" in ds for ds in denoised)


def test_empty_input_fails_the_container(tmp_path, image, docker_env):
    """The app's exit status is the container's: 1 on an empty input, with the app's message."""
    (tmp_path / "in").mkdir()
    done = run_image(docker_env, image, tmp_path / "in", tmp_path / "out")
    assert done.returncode == 1
    assert "no DICOM study in input folder /var/holoscan/input" in done.stderr + done.stdout


@pytest.mark.parametrize(
    "fault, message",
    [
        ("model", "model folder /models is missing or cannot be read by uid 1000"),
        ("input", "input folder /var/holoscan/input is missing or cannot be read by uid 1000"),
        ("output", "output folder /var/holoscan/output cannot be written by uid 1000 (a read-only mount?)"),
    ],
)
def test_unusable_folders_are_named(tmp_path, image, docker_env, fault, message):
    """A model folder that is not there (a model path given without its mount), an input the package's user cannot
    read, a read-only output mount: exit 1 and one line naming the folder, before the application starts."""
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.dcm").write_bytes(b"")
    if fault == "input":
        inputs.chmod(0o700)  # root's: the package's user (uid 1000) cannot list it
    options = ["-e", "HOLOSCAN_MODEL_PATH=/models"] if fault == "model" else []
    done = run_image(docker_env, image, inputs, outputs, *options, output_mode="ro" if fault == "output" else "rw")
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-3000:]
    assert re.search(rf"\[FATAL\] {re.escape(message)}$", log, re.MULTILINE), log[-3000:]
    assert "Launching application" not in log


def test_image_has_the_package_layout_and_only_run_time_packages(tmp_path, image, docker_env):
    """The environment variables, user and entrypoint of the package that ``monai-deploy package`` builds (its
    generated Dockerfile), the model folder inside, a CPU torch and none of the project's training or test tools."""
    context = tmp_path / "context"
    last_line(package("context", str(context)))
    expected = re.findall(r"^ENV (HOLOSCAN_\w+=\S+)$", (context / "Dockerfile").read_text(), re.MULTILINE)
    assert len(expected) == 12
    inspect = docker(docker_env, "image", "inspect", "--format", "{{json .Config}}", image)
    config = json.loads(inspect.stdout)
    assert set(expected) <= set(config["Env"])
    assert config["User"] == "holoscan" and config["Entrypoint"] == ["/var/holoscan/tools"]
    code = (
        "import importlib.util as u, json, os, torch; "
        f"print(json.dumps([[m for m in {NOT_AT_RUN_TIME!r} if u.find_spec(m)], torch.version.cuda, os.getuid(), "
        "sorted(os.listdir('/opt/holoscan/models/motfm_bundle/models'))]))"
    )
    done = docker(docker_env, "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[], None, 1000, ["model.pt"]]
