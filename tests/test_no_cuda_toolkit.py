"""A machine without the CUDA toolkit: the deploy app and the DICOM node run with pip's CUDA runtime alone, and the
bundle's own requirements bring no Holoscan (with the Deploy SDK installed, ``import monai`` imports Holoscan, whose
core library links libcudart.so.13).

The system's CUDA is put out of reach in a private mount namespace (``unshare -m``): an empty tmpfs over each folder
of its libcudart.so.13, and no LD_LIBRARY_PATH (tests/run.sh sets one for the suite). Skipped where ``unshare`` is
not permitted.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import venv

import pytest
from pacs_fixtures import store

from testbed import ROOT
from testbed.app import output_series, run_app
from testbed.pacs import Node, free_port
from testbed.studies import study_header, write_mr_series, write_seg

MISSING_CUDA = "libcudart.so.13: cannot open shared object file"


def cuda_folders() -> list[str]:
    """The system's CUDA folders: those ldconfig lists a libcudart.so.13 in, and /usr/local/cuda*; none inside
    another."""
    listed = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    folders = {os.path.realpath(os.path.dirname(f)) for f in re.findall(r"libcudart\.so\.13 .*=> (\S+)", listed)}
    folders |= {os.path.realpath(f) for f in glob.glob("/usr/local/cuda*")}
    return sorted(f for f in folders if not any(f.startswith(other + "/") for other in folders))


@pytest.fixture(scope="module")
def no_cuda() -> list[str]:
    """A command prefix: what follows it runs with the system's CUDA out of reach. Checked: there, Holoscan cannot be
    imported without help."""
    mounts = "".join(f"mount -t tmpfs none {shlex.quote(folder)} && " for folder in cuda_folders())
    as_root = ["--map-root-user"] if os.getuid() else []  # a user namespace lets a user mount there
    prefix = ["unshare", "--mount", *as_root, "sh", "-c", f'{mounts}exec env -u LD_LIBRARY_PATH "$@"', "sh"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        pytest.skip("no unshare command (util-linux): cannot hide the system's CUDA")
    if probe.returncode != 0:
        pytest.skip(f"a private mount namespace is not permitted here (unshare --mount): {probe.stderr.strip()}")
    # -S: without site-packages' start-up hooks, the dynamic loader alone cannot find the CUDA runtime there
    loader = "import ctypes; ctypes.CDLL('libcudart.so.13')"
    alone = subprocess.run([*prefix, sys.executable, "-S", "-c", loader], capture_output=True, text=True, check=False)
    assert alone.returncode != 0 and MISSING_CUDA in alone.stderr, alone.stderr[-3000:]
    return prefix


def test_the_full_venv_imports_monai_without_system_cuda(no_cuda):
    """The test venv (``tests/run.sh``: the bundle, the SDK and Holoscan) imports ``monai.bundle`` there: its start-up
    hook (``motfm_deploy.cuda.install_startup_hook``) loads pip's CUDA runtime before Holoscan links it."""
    done = subprocess.run(
        [*no_cuda, sys.executable, "-c", "import monai.bundle, holoscan"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_app_runs_without_system_cuda(no_cuda, tmp_path, volumes, model):
    """``python deploy_app`` loads pip's CUDA runtime itself: it synthesizes a series from a SEG study."""
    source = write_mr_series(tmp_path / "in" / "t1", volumes[0], study_header(), num_slices=2)
    write_seg(tmp_path / "in" / "seg.dcm", source, volumes[1])
    done = run_app(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model)], prefix=no_cuda)
    assert done.returncode == 0, done.stderr[-3000:]
    (series,) = output_series(tmp_path / "out").values()
    assert len(series) == 2 and {ds.SyntheticData for ds in series} == {"YES"}


def test_the_node_processes_a_study_without_system_cuda(no_cuda, tmp_path, volumes, model):
    """``python -m pacs_node serve`` receives a study and runs the app on it (no PACS answers at the destination: the
    new series waits in the outbox)."""
    source = write_mr_series(tmp_path / "in" / "t1", volumes[0], study_header(), num_slices=2)
    write_seg(tmp_path / "in" / "seg.dcm", source, volumes[1])
    node = Node(tmp_path / "node", model, destination=free_port(), ae_title="MOTFM").start(prefix=no_cuda)
    try:
        files = sorted(p for p in (tmp_path / "in").rglob("*") if p.is_file())
        assert store(node.port, node.ae_title, files) == [0] * len(files) == [0] * 3
        status = node.wait_for(lambda: (s := node.status())["outbox"] + s["failed"] and s, 300, "the app's run")
    finally:
        node.stop()
    assert not status["failed"] and [s["instances"] for s in status["outbox"][0]["series"]] == [2], status


@pytest.mark.container
def test_the_bundle_requirements_import_monai_without_system_cuda(no_cuda, tmp_path):
    """bundle/requirements.txt alone, in a new venv (pip's usual sources: a few minutes): no Holoscan, and the
    bundle's inference workflow loads there (``import monai``, MONAI's bundle runner and the bundle's code)."""
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    requirements = str(ROOT / "bundle" / "requirements.txt")
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", requirements], check=True, timeout=1800)
    code = (
        "import importlib.util, sys; sys.path.insert(0, 'bundle'); import monai, monai.bundle, scripts.synthesis; "
        "print(importlib.util.find_spec('holoscan'))"
    )
    done = subprocess.run([*no_cuda, python, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["None"]
