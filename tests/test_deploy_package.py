"""The inputs ``monai-deploy package`` reads are complete and consistent (the packager itself needs Docker): the
app folder, app.yaml, the model folder, and the packaging doc's commands (requirements.txt:
tests/test_requirements.py)."""

from __future__ import annotations

import re
import shutil

import pytest

from motfm_deploy.model import Bundle, find_bundle
from testbed.app import APP
from testbed.bundles import make_bundle, tiny_deploy


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    return Bundle(make_bundle(tmp_path_factory.mktemp("bundle") / "motfm", tiny_deploy()))


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
    readme = (APP / "docs" / "packaging.md").read_text()
    tag = PlatformParameters(Platform.x86_64, f"motfm-dicom:{manifest.version}", manifest.version, 13).tag
    assert f"monai-deploy run {tag}" in readme
    assert f"-t motfm-dicom:{manifest.version} --platform x86_64" in readme
    assert f"monai-deploy package deploy_app -c deploy_app/app.yaml -m {MODELS}" in readme


MODELS = "build/models"


def test_packaged_model_folder_holds_one_loadable_bundle(tmp_path, bundle):
    """The packaging doc's model folder (a bundle's configs, scripts and weights in one sub-folder) is one model to the
    packager and the bundle to the app, as the package's model path will hold it."""
    from holoscan_cli.packager.models import Models

    packaged = tmp_path / MODELS / "motfm_bundle"
    for part in ("configs", "scripts", "models"):
        shutil.copytree(bundle.path / part, packaged / part)
    assert Models().build(tmp_path / MODELS) == {"motfm_bundle": packaged}
    assert find_bundle(tmp_path / MODELS) == packaged
    assert Bundle(tmp_path / MODELS).model.name == bundle.model.name
