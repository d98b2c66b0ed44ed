"""The inputs ``monai-deploy package`` reads are complete and consistent (the packager itself needs Docker): the
app folder, app.yaml, requirements.txt against what the app imports, the model folder, and the README's commands."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_fixtures import ROOT, make_bundle

APP = ROOT / "deploy_app"
sys.path.insert(0, str(APP))

from motfm_deploy.model import Bundle, find_bundle  # noqa: E402

LOCAL = {"app", "operators", "motfm_deploy", "scripts"}
# imported only by code the app never runs: the minibatch OT coupling of training (scripts.flow.ot_pairing)
NOT_AT_RUN_TIME = {"nilearn", "ot"}
# used without an import statement: pydicom's decoders for compressed transfer syntaxes, scikit-image's wavelets
PLUGINS = {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "PyWavelets"}


def requirements() -> dict[str, str]:
    """requirements.txt as {normalised name: pinned version}; every line must be an exact pin."""
    pins = {}
    for line in (APP / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.+\-]*)", line)
            assert match, f"requirements.txt: {line!r} is not pinned with =="
            pins[normalise(match[1])] = match[2]
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(files) -> set[str]:
    """Top-level names of the absolute imports in ``files``, wherever they are in the code."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - LOCAL - {"__future__"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    return Bundle(make_bundle(tmp_path_factory.mktemp("bundle") / "motfm"))


def test_requirements_pin_every_import_at_the_tested_version(bundle):
    """Every distribution the app's code and the bundle code it loads import is pinned, at the installed version,
    with Holoscan 4.2.0 (the last holoscan-cli that packages)."""
    # load the bundle as the app does, in a fresh process: this session's other tests import more of scripts
    code = (
        f"import sys, json; sys.path.insert(0, {str(APP)!r}); from motfm_deploy.model import Bundle; "
        f"Bundle({str(bundle.path)!r}).model; import scripts.synthetic_subjects; "  # the synthesis operator uses it
        "print(json.dumps([m.__file__ for n, m in sys.modules.items() if n.startswith('scripts.') and m.__file__]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    files = [*APP.rglob("*.py"), *json.loads(done.stdout.strip().splitlines()[-1])]
    distributions = importlib.metadata.packages_distributions()
    needed = {normalise(d) for name in imported_modules(files) - NOT_AT_RUN_TIME for d in distributions[name]}
    pins = requirements()
    assert needed <= set(pins), f"not in requirements.txt: {sorted(needed - set(pins))}"
    assert {normalise(p) for p in PLUGINS} <= set(pins)
    assert pins["holoscan-cu13"] == pins["holoscan-cli"] == "4.2.0"
    for name, version in pins.items():
        installed = importlib.metadata.version(name).split("+")[0]
        assert installed == version, f"requirements.txt pins {name}=={version}, the tests run {installed}"


def test_packager_reads_the_application_and_its_config():
    from holoscan_cli.common.enum_types import ApplicationType, Platform
    from holoscan_cli.packager.config_reader import ApplicationConfiguration
    from holoscan_cli.packager.parameters import PackageBuildParameters, PlatformParameters

    config = ApplicationConfiguration()
    config.read(APP / "app.yaml")
    parameters = PackageBuildParameters()
    parameters.application = APP
    assert parameters.application_type == ApplicationType.PythonModule  # __main__.py
    assert parameters.requirements_file_path == APP / "requirements.txt"
    manifest = config.populate_package_manifest(parameters)
    assert manifest.version == "0.1.0" and config.title()
    assert set(manifest.resources) == {"cpu", "gpu", "memory", "gpuMemory"}
    assert re.fullmatch(r"\d+(Mi|Gi)", manifest.resources["memory"])
    readme = (APP / "README.md").read_text()
    tag = PlatformParameters(Platform.x86_64, f"motfm-dicom:{manifest.version}", manifest.version, 13).tag
    assert f"monai-deploy run {tag}" in readme
    assert f"-t motfm-dicom:{manifest.version} --platform x86_64" in readme
    assert f"monai-deploy package deploy_app -c deploy_app/app.yaml -m {MODELS}" in readme


MODELS = "build/models"


def test_packaged_model_folder_holds_one_loadable_bundle(tmp_path, bundle):
    """The README's model folder (a bundle's configs, scripts and weights in one sub-folder) is one model to the
    packager and the bundle to the app, as the package's model path will hold it."""
    from holoscan_cli.packager.models import Models

    packaged = tmp_path / MODELS / "motfm_bundle"
    for part in ("configs", "scripts", "models"):
        shutil.copytree(bundle.path / part, packaged / part)
    assert Models().build(tmp_path / MODELS) == {"motfm_bundle": packaged}
    assert find_bundle(tmp_path / MODELS) == packaged
    assert Bundle(tmp_path / MODELS).model.name == bundle.model.name
