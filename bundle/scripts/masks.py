"""Cases from a folder of the user's own masks (inference's ``masks_dir``), without a datalist.

Each mask NIfTI in the folder (sorted by name) is one case:

- a 2D mask (X, Y) is one plane; a class-conditioned model needs its class from ``mask_classes``, a JSON file
  mapping file name -> class (a lone plane has no level in a volume to derive it from);
- a 3D mask volume (X, Y, Z) is generated plane by plane along the axis its model's class rule reads (axial for
  "axial_level"), each plane with the class the rule gives for it (``classes.volume_classes``, as the training
  data's), and written back as one volume on the mask's own grid (``synthesis.Synthesis``).

The cases go through the same checks as a datalist's (``data.check_cases``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import nibabel as nib
import numpy as np

from .classes import class_rule, volume_classes
from .data import case_id, check_cases
from .planes import MIN_PLANES, axis_along

MASK_SUFFIXES = (".nii.gz", ".nii")


def _read_mask(path: str) -> nib.Nifti1Image:
    """The mask at ``path`` with its array read (so a truncated file fails here, named)."""
    try:
        image = nib.load(path)
        image.get_fdata()
    except Exception as e:  # nibabel raises several types for truncated or corrupt files
        raise ValueError(f"{path}: cannot read mask ({type(e).__name__}: {e})") from e
    return image


def _read_mask_classes(path: str | None) -> dict[str, int]:
    """The ``mask_classes`` file: {mask file name: class}; {} without one."""
    if not path:
        return {}
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"mask_classes file {path} cannot be read: {e}") from e
    if not isinstance(content, dict):
        raise ValueError(f"mask_classes file {path} must map mask file names to classes, got {type(content).__name__}")
    return content


def mask_cases(
    masks_dir: str,
    num_labels: int,
    num_classes: int,
    classes: Mapping[str, Any] | None = None,
    mask_classes: str | None = None,
) -> list[dict]:
    """The cases of every mask in ``masks_dir``: a 2D mask's ``{"label", "class"?}``, a 3D mask's planes
    ``{"label", "plane", "axis", "volume", "planes", "subject", "class"?}``; checked by ``check_cases``.

    Args:
        masks_dir: folder of mask NIfTI files (.nii.gz, .nii), labels 0..num_labels - 1.
        num_labels: the model's label count (0: an unconditional model, refused here).
        num_classes: the model's class count (0: no class).
        classes: the model's class declaration ``{"rule": ..., "names": [...]}``.
        mask_classes: JSON file {2D mask file name: class} for a class-conditioned model.
    """
    if not num_labels:
        raise ValueError(f"masks_dir {masks_dir} is given, but this model is not conditioned on a mask")
    if not os.path.isdir(masks_dir):
        raise FileNotFoundError(f"masks_dir not found: {masks_dir}")
    names = sorted(n for n in os.listdir(masks_dir) if n.endswith(MASK_SUFFIXES) and not n.startswith("."))
    if not names:
        raise ValueError(f"masks_dir {masks_dir} holds no mask NIfTI files ({', '.join(MASK_SUFFIXES)})")
    given = _read_mask_classes(mask_classes)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"mask_classes file {mask_classes} names files not in {masks_dir}: {unknown[:5]}")
    items, ids = [], set()
    for name in names:
        path = os.path.abspath(os.path.join(masks_dir, name))
        mask = _read_mask(path)
        if mask.ndim == 2:
            item = {"label": path}
            if num_classes:
                if name not in given:
                    raise ValueError(
                        f"{path}: a 2D mask has no level in a volume to derive its class from, and this model needs a "
                        f"class (0..{num_classes - 1}); give it in a JSON file mapping file name -> class "
                        f'(--mask_classes classes.json, e.g. {{"{name}": 1}}), give the 3D mask volume, or use a '
                        "datalist with a 'class' per case"
                    )
                item["class"] = given[name]
            items.append(item)
        elif mask.ndim == 3:
            items += _volume_items(path, mask, num_classes, classes, ids)
        else:
            raise ValueError(f"{path}: expected a 2D mask or a 3D mask volume, got shape {mask.shape}")
    return check_cases(
        items, f"from masks_dir {masks_dir}", use_mask=True, num_classes=num_classes, require_image=False
    )


def _volume_items(
    path: str, mask: nib.Nifti1Image, num_classes: int, classes: Mapping[str, Any] | None, ids: set[str]
) -> list[dict]:
    """One item per plane of a 3D mask: along the axis the class rule reads, with the rule's class (class
    models), else along the volume's axial axis."""
    if num_classes:
        rule = class_rule(classes, num_classes, f"{path}: classes of its planes cannot be derived")
        labels = np.asarray(mask.dataobj)
        try:
            axis, levels = volume_classes(rule, labels, mask.affine)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    else:
        axis, levels = axis_along(mask.affine)[0], None
    count = mask.shape[axis]
    if count < MIN_PLANES:
        raise ValueError(
            f"{path}: a mask volume needs at least {MIN_PLANES} planes along its axis {axis}, it has {count}; store "
            "a single plane as a 2D mask"
        )
    volume = case_id({"label": path}, 0, ids)
    return [
        {
            "label": path,
            "plane": k,
            "axis": axis,
            "volume": volume,
            "planes": count,
            "subject": volume,
            "id": f"{volume}_plane-{k:03d}",
            **({"class": int(levels[k])} if levels is not None else {}),
        }
        for k in range(count)
    ]
