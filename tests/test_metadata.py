"""The bundle's metadata.json against MONAI's bundle specification, verified offline with the schema in bundle/docs.

``verify_metadata`` only downloads the schema when ``filepath`` does not exist (``monai.apps.utils.download_url``
returns early for an existing file, after checking its hash if one is given), so pointing ``filepath`` at the
bundle's copy keeps every check here offline.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import monai
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata
from packaging.version import Version

from conftest import BUNDLE, CONFIGS

META = CONFIGS / "metadata.json"
SCHEMA = BUNDLE / "docs" / "metadata_schema.json"  # the bundle's own schema, not a copy of the official file
OFFICIAL_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
# the schema is the bundle's own, deliberately not pinned by a hash
pytestmark = pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning")
# the mandatory keys of mb_specification.rst ("metadata.json File")
SPEC_REQUIRED = (
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)


def load_meta() -> dict:
    return json.loads(META.read_text())


def write_meta(meta: dict, folder: Path) -> str:
    path = folder / "metadata.json"
    path.write_text(json.dumps(meta))
    return str(path)


def test_metadata_verifies_against_the_bundled_schema():
    meta = load_meta()
    assert meta["schema"] == OFFICIAL_SCHEMA_URL
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))


def test_verify_reads_the_local_schema_and_never_fetches_the_url(tmp_path):
    """With the schema present, an unresolvable URL (RFC 2606 ``.invalid``) verifies too: no download is tried."""
    before = SCHEMA.read_bytes()
    meta = {**load_meta(), "schema": "https://schema.invalid/meta_schema_20240725.json"}
    verify_metadata(meta_file=write_meta(meta, tmp_path), filepath=str(SCHEMA))
    assert SCHEMA.read_bytes() == before


def test_schema_requires_the_specification_keys():
    schema = json.loads(SCHEMA.read_text())
    assert set(schema["required"]) == set(SPEC_REQUIRED)
    assert "mb_specification.rst" in schema["description"]


@pytest.mark.parametrize("key", ["version", "required_packages_version", "network_data_format"])
def test_metadata_without_a_required_key_fails(tmp_path, key):
    meta = load_meta()
    del meta[key]
    with pytest.raises(ValueError, match=f"'{key}' is a required property"):
        verify_metadata(meta_file=write_meta(meta, tmp_path), filepath=str(SCHEMA))


@pytest.mark.parametrize(
    "path, key",
    [
        (("inputs", "image"), "num_channels"),
        (("outputs", "pred"), "channel_def"),
        ((), "outputs"),
    ],
)
def test_network_data_format_without_a_required_key_fails(tmp_path, path, key):
    meta = load_meta()
    entry = meta["network_data_format"]
    for name in path:
        entry = entry[name]
    del entry[key]
    with pytest.raises(ValueError, match=f"'{key}' is a required property"):
        verify_metadata(meta_file=write_meta(meta, tmp_path), filepath=str(SCHEMA))


def test_versions_match_the_installed_packages():
    meta = load_meta()
    assert monai.__version__ == meta["monai_version"]
    assert torch.__version__.split("+")[0] == meta["pytorch_version"]
    assert np.__version__ == meta["numpy_version"]
    for package, version in meta["required_packages_version"].items():
        assert Version(importlib.metadata.version(package)) >= Version(version), package


def test_network_data_format_describes_the_shipped_network():
    """Inputs drawn from the declared shapes, dtypes and ranges run through the network of train.json, and its
    output has the declared shape and dtype."""
    fmt = load_meta()["network_data_format"]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    image_size, num_labels, num_classes = (parser[k] for k in ("image_size", "num_labels", "num_classes"))
    inputs, pred = fmt["inputs"], fmt["outputs"]["pred"]
    assert inputs["image"]["spatial_shape"] == inputs["label"]["spatial_shape"] == pred["spatial_shape"] == image_size
    assert inputs["label"]["value_range"] == [0, num_labels - 1]
    assert inputs["class"]["value_range"] == [0, num_classes]  # num_classes itself is the "no class" index

    def uniform(spec: dict, shape: tuple[int, ...]) -> torch.Tensor:
        low, high = spec["value_range"]
        return (torch.rand(shape) * (high - low) + low).to(getattr(torch, spec["dtype"]))

    def labels(spec: dict, shape: tuple[int, ...]) -> torch.Tensor:
        low, high = spec["value_range"]
        return torch.randint(low, high + 1, shape).to(getattr(torch, spec["dtype"]))

    torch.manual_seed(0)
    batch, image = 2, inputs["image"]
    x = uniform(image, (batch, image["num_channels"], *image["spatial_shape"]))
    timesteps = uniform(inputs["timesteps"], (batch,))
    mask = labels(inputs["label"], (batch, inputs["label"]["num_channels"], *inputs["label"]["spatial_shape"]))
    cls = labels(inputs["class"], (batch,))
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = network(x, timesteps, mask=mask, cls=cls)
    assert out.shape == (batch, pred["num_channels"], *pred["spatial_shape"])
    assert out.dtype == getattr(torch, pred["dtype"])
