"""Bundles for the deploy app and the node: the real configs and scripts with untrained weights."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import ROOT

BUNDLE = ROOT / "bundle"
BUNDLE_VERSION = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
TINY_UNET = {  # the network of the tests: the real structure (levels, attention, ControlNet), tiny
    "channels": [8, 16],
    "attention_levels": [False, True],
    "num_res_blocks": 1,
    "num_head_channels": 8,
    "norm_num_groups": 4,
}


def tiny_deploy(
    image_size: Sequence[int] = (32, 32), variant: str = "mask_class_2d", num_steps: int = 2
) -> dict[str, Any]:
    """configs/deploy.json for a tiny network of ``variant`` (a file of bundle/configs/variants) on the CPU."""
    overrides = json.loads((BUNDLE / "configs" / "variants" / f"{variant}.json").read_text())
    overrides = {k: v for k, v in overrides.items() if k in ("variant", "num_labels", "num_classes")}
    return {**overrides, "image_size": list(image_size), "unet": TINY_UNET, "num_steps": num_steps, "device": "cpu"}


def make_bundle(
    folder: Path, deploy: Mapping[str, Any] | None = None, intensity_range: Sequence[float] = (0.0, 900.0)
) -> Path:
    """A bundle at ``folder``: the real configs/inference.json, variants, metadata.json and scripts, ``deploy`` as
    configs/deploy.json (None: the shipped configuration), and models/model.pt holding untrained weights with the
    card training writes for that configuration, with ``intensity_range``."""
    if str(BUNDLE) not in sys.path:
        sys.path.insert(0, str(BUNDLE))  # the configs name `scripts.*`
    from monai.bundle import ConfigParser

    from motfm_deploy.model import config_files
    from scripts.checkpoint import save_model

    (folder / "configs").mkdir(parents=True)
    for name in ("inference.json", "metadata.json"):
        shutil.copy(BUNDLE / "configs" / name, folder / "configs" / name)
    shutil.copytree(BUNDLE / "configs" / "variants", folder / "configs" / "variants")
    (folder / "scripts").symlink_to(BUNDLE / "scripts")
    if deploy is not None:
        (folder / "configs" / "deploy.json").write_text(json.dumps(dict(deploy), indent=1))
    parser = ConfigParser()
    parser.read_config([str(c) for c in config_files(folder)])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    card = parser.get_parsed_content("card")
    card.intensity_range = [float(v) for v in intensity_range]
    save_model(str(folder / "models" / "model.pt"), network, None, card)
    return folder
