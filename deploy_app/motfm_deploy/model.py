"""The bundle the app runs, and the way from image planes to MONAI MetaTensors and back.

The model path (``-m`` or HOLOSCAN_MODEL_PATH) is a MOTFM bundle folder, or a folder holding exactly one (as
``monai-deploy package --models`` lays models out in a package). A bundle folder has:

- ``configs/inference.json``: the bundle's inference config (network, sampler, image size, seed, device);
- ``configs/deploy.json`` (optional): overrides merged after it (another image size, fewer solver steps,
  ``"noise": "per_case"``, ``ckpt_path``), and the app's own ``max_voxels``: the largest volume a 3D model is given
  (rows x columns x planes). A ``variant`` it names brings its ``configs/variants/<variant>.json``, where the
  bundle has one, in before it (a variant without a file carries its settings in deploy.json itself), so
  ``configs/deploy_3d.json`` (``{"variant": "mask_3d", "ckpt_path": ... models/model_3d.pt}``) copied to
  ``configs/deploy.json`` switches the app to the shipped 3D model;
- ``configs/metadata.json``: the model's name and version, written into the output's equipment attributes;
- ``scripts/``: the bundle's code; the app reaches the network only through ``scripts.sampler``;
- ``models/model.pt`` (or deploy.json's ``ckpt_path``): the weights with their model card (checked against the
  config; for a class-conditioned model it declares what the classes mean and the rule that derives them, see
  ``scripts.checkpoint.ModelCard``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from .images import Plane
from .jobs import ModelInfo
from .stack import Stack

CONFIGS = ("configs/inference.json", "configs/deploy.json")
# the app's noise (``scripts.sampler.noise_index``) unless deploy.json sets ``noise``: one noise for all planes of a
# series, so a 2D model's neighbouring planes agree (bundle/docs/benchmarks.md, inter-plane consistency)
NOISE = "per_subject"
# the largest stack (rows x columns x planes) a 3D model is given unless deploy.json sets ``max_voxels``
MAX_VOXELS = 512**3
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def find_bundle(path: Path) -> Path:
    """The bundle root at ``path``: ``path`` itself or its only sub-folder that has configs/inference.json."""
    path = Path(path).resolve()
    if (path / CONFIGS[0]).is_file():
        return path
    found = [p for p in sorted(path.iterdir()) if (p / CONFIGS[0]).is_file()] if path.is_dir() else []
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise FileNotFoundError(
            f"model path {path} must be a MOTFM bundle (with {CONFIGS[0]}) or hold exactly one (found {what})"
        )
    return found[0]


def config_files(root: Path) -> list[Path]:
    """The configs of the bundle at ``root``, in merge order: inference.json, the variant file that deploy.json
    names (where the bundle has it), deploy.json (where present)."""
    deploy = root / CONFIGS[1]
    variant = json.loads(deploy.read_text()).get("variant") if deploy.is_file() else None
    files = [root / CONFIGS[0], root / "configs" / "variants" / f"{variant}.json", deploy]
    return [files[0]] + [f for f in files[1:] if f.is_file()]


@dataclass
class Model:
    """A loaded bundle: what the operators need to run it."""

    file: str  # the model file, for messages
    network: torch.nn.Module
    sampler: Any  # scripts.sampler.FlowSampler
    image_size: list[int]
    num_labels: int
    num_classes: int
    classes: dict[str, Any] | None  # the card's declaration of the classes: {"names": [...], "rule": ...}
    intensity_range: list[float]
    seed: int
    noise: str  # "per_subject": one noise for all planes of a series; "per_case": each plane its own
    batch_size: int
    max_voxels: int  # the largest stack a 3D model is given
    device: torch.device
    name: str
    version: str
    settings: str  # method, solver and steps, for the derivation description

    @property
    def spatial_dims(self) -> int:
        return len(self.image_size)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.version, self.settings)

    def prepare(self, cases: Sequence[dict], intensity_range: Sequence[float] | None = None) -> list[dict]:
        """Cases {"image"?, "label"?: MetaTensor (1, *spatial), ...} on the model's grid (the bundle's
        ``model_transforms``); images scaled from ``intensity_range`` to [-1, 1]."""
        from scripts.data import model_transforms

        transforms = model_transforms(self.image_size, self.num_labels, intensity_range)
        return [transforms(case) for case in cases]

    def stack(self, planes: Sequence[Plane]) -> Stack:
        """The stack of ``planes`` for a 3D model (``Stack.of``), checked against ``max_voxels`` before any work.
        Raises ValueError naming the file, the stack's size and the limit."""
        stack = Stack.of(planes)
        if stack.voxels > self.max_voxels:
            rows, columns = stack.origin.shape
            raise ValueError(
                f"{stack.origin.where}: a stack of {columns} x {rows} x {max(len(planes), stack.slices)} = "
                f"{stack.voxels} voxels is over the limit of {self.max_voxels} voxels for a 3D model (max_voxels in "
                "configs/deploy.json)"
            )
        return stack

    def restore(
        self, images: torch.Tensor, references: Sequence[MetaTensor], intensity_range: Sequence[float]
    ) -> list[np.ndarray]:
        """Model outputs (B, 1, *image_size) in [-1, 1] back to ``intensity_range`` units on the source grid of
        each prepared reference; returns the (rows, columns) planes of all of them, in order."""
        from scripts.data import to_source_grid, to_units

        units = to_units(images.detach().cpu(), intensity_range)
        return [plane for image, ref in zip(units, references) for plane in to_planes(to_source_grid(image, ref))]


class Bundle:
    """The bundle at ``path``, loaded on first use of ``model`` (a run without jobs never loads it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @cached_property
    def model(self) -> Model:
        from monai.bundle import ConfigParser

        root = find_bundle(self.path)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))  # the configs name `scripts.*`
        parser = ConfigParser()
        parser.read_config([str(c) for c in config_files(root)])
        parser["bundle_root"] = str(root)
        file = str(parser.get_parsed_content("ckpt_path"))
        try:
            card = parser.get_parsed_content("model_card")  # loads the weights into `network` after checking them
        except RuntimeError as e:  # MONAI wraps the error of a config expression; its cause says what is wrong
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise cause from None
        network = parser.get_parsed_content("network").eval()
        meta_file = root / "configs" / "metadata.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        sampler = parser.get_parsed_content("sampler")
        value = parser.get_parsed_content
        deploy = root / CONFIGS[1]
        settings = json.loads(deploy.read_text()) if deploy.is_file() else {}
        return Model(
            file=file,
            network=network,
            sampler=sampler,
            image_size=[int(s) for s in value("image_size")],
            num_labels=int(value("num_labels")),
            num_classes=int(value("num_classes")),
            classes=card.get("classes"),
            intensity_range=[float(v) for v in card["intensity_range"]],
            seed=int(value("seed")),
            noise=str(settings.get("noise", NOISE)),
            batch_size=int(value("batch_size")),
            max_voxels=int(settings.get("max_voxels", MAX_VOXELS)),
            device=torch.device(value("device")),
            name=str(meta.get("name", root.name)),
            version=str(meta.get("version", "unknown")),
            settings=f"{card['method']}, {sampler.solver} solver, {sampler.num_steps} steps",
        )


def _affine(plane: Plane, step: np.ndarray) -> np.ndarray:
    """4x4 RAS affine of voxel (column, row, slice) for ``plane``, with ``step`` (3,) LPS mm between slices."""
    affine = np.eye(4)
    affine[:3, 0] = plane.row_cosine * plane.spacing[1]
    affine[:3, 1] = plane.column_cosine * plane.spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = plane.position
    affine[:3] = LPS_TO_RAS @ affine[:3]
    return affine


def _tensor(array: np.ndarray, affine: np.ndarray, where: str) -> MetaTensor:
    affine = torch.as_tensor(affine, dtype=torch.float64)
    meta = {"original_affine": affine, "spatial_shape": np.array(array.shape), "filename_or_obj": where}
    return MetaTensor(torch.as_tensor(array[None]), affine=affine, meta=meta)


def plane_tensor(plane: Plane, array: np.ndarray) -> MetaTensor:
    """A (rows, columns) array on ``plane`` as a 2D MetaTensor (1, columns, rows).

    Its affine maps (column, row) onto the two patient axes (RAS) closest to the plane, so that the model's
    orientation (RAS) puts axial, coronal and sagittal slices the way up it was trained on; oblique planes get
    the nearest of those.
    """
    full = _affine(plane, plane.normal)
    axes = [a for a in range(3) if a != int(np.argmax(np.abs(LPS_TO_RAS @ plane.normal)))]
    return _tensor(array.T, full[np.ix_([*axes, 3], [0, 1, 3])], plane.where)


def volume_tensor(stack: Stack, arrays: Sequence[np.ndarray], labels: bool) -> MetaTensor:
    """The planes' (rows, columns) arrays as the stack's volume (``Stack.volume``; ``labels``: taken from the
    nearest plane where it is resampled), a 3D MetaTensor (1, columns, rows, slices) whose third axis is the step
    along the stack's axis (exact for an oblique stack)."""
    volume = stack.volume(np.stack(arrays), labels).transpose(2, 1, 0)
    return _tensor(volume, _affine(stack.origin, stack.direction * stack.step), stack.origin.where)


def to_planes(tensor: torch.Tensor) -> list[np.ndarray]:
    """The inverse of ``plane_tensor`` / ``volume_tensor``: (1, columns, rows[, slices]) -> (rows, columns) arrays."""
    array = np.asarray(tensor.detach().cpu(), dtype=np.float32)[0]
    return [array.T] if array.ndim == 2 else [array[..., k].T for k in range(array.shape[-1])]


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
