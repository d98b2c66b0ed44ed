"""Class rules: how a class-conditioned 2D model's class is derived from where a plane lies in its mask volume.

A model card names its rule in ``classes.rule`` (e.g. "axial_level" for the default data). The data builders
(``synthetic_subjects.py``, ``slice_volumes.py``), inference from mask volumes (``masks.py``) and the DICOM app
all derive classes with the rule registered here, so a rule is written once:

- ``axial_level`` (3 classes): 0, 1 or 2 for the inferior, middle or superior third of the labelled (label > 0)
  extent of the volume along its feet-head axis; planes beyond that extent take the nearest end's class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

if __package__:
    from .planes import axis_along
else:  # imported by a script run as a file
    from planes import axis_along

LEVEL_NAMES = ("inferior", "middle", "superior")


def axial_level(z: int, z_min: int, z_max: int) -> int:
    """Class of an axial slice: 0, 1 or 2 for the inferior, middle or superior third of [z_min, z_max]."""
    return min(2, max(0, 3 * (z - z_min) // (z_max - z_min + 1)))


def axial_levels(labels: np.ndarray, axis: int) -> list[int]:
    """The axial level (``axial_level``) of each plane of a label volume along ``axis``, planes ordered from feet
    to head; planes beyond the labelled extent take the nearest end's.

    Args:
        labels: a label volume of any shape (e.g. (X, Y, Z)); labels > 0 are the brain.
        axis: the feet-head axis of ``labels``.
    """
    labels = np.asarray(labels)
    others = tuple(a for a in range(labels.ndim) if a != axis % labels.ndim)
    labelled = np.flatnonzero(np.any(labels > 0, axis=others))
    if not labelled.size:
        raise ValueError("the volume holds no label > 0, so its planes have no axial level")
    lo, hi = int(labelled.min()), int(labelled.max())
    return [axial_level(min(max(k, lo), hi), lo, hi) for k in range(labels.shape[axis])]


@dataclass(frozen=True)
class ClassRule:
    """A rule: ``derive(labels, axis)`` -> the class of each plane along ``axis`` (planes ordered along
    ``world_axis``, RAS 0 x, 1 y, 2 z: the direction the rule reads), and how many classes it gives."""

    derive: Callable[[np.ndarray, int], list[int]]
    num_classes: int
    world_axis: int


CLASS_RULES: dict[str, ClassRule] = {"axial_level": ClassRule(axial_levels, 3, world_axis=2)}


def class_rule(classes: Mapping[str, Any] | None, num_classes: int, where: str) -> ClassRule:
    """The rule a model's class declaration (``{"rule": ..., "names": [...]}``) names, checked against the number
    of classes; a missing or unknown rule, or one of another class count, is a ValueError starting with ``where``."""
    rule = (classes or {}).get("rule")
    if rule not in CLASS_RULES:
        how = f"names the class rule {rule!r}" if rule else "declares no rule for its classes"
        raise ValueError(
            f"{where}: a model of {num_classes} classes whose `classes` {how}; classes are derived by "
            f"{sorted(CLASS_RULES)} only (`classes` in the training config declares them)"
        )
    if CLASS_RULES[rule].num_classes != num_classes:
        raise ValueError(
            f"{where}: `classes` names the class rule {rule!r}, which gives {CLASS_RULES[rule].num_classes} "
            f"classes, for a model of {num_classes} classes"
        )
    return CLASS_RULES[rule]


def volume_classes(rule: ClassRule, labels: np.ndarray, affine: np.ndarray) -> tuple[int, list[int]]:
    """The voxel axis a rule reads a NIfTI label volume along, and the class of each plane along it, in the
    volume's index order (whichever way the axis runs).

    Args:
        rule: a ``ClassRule``.
        labels: (X, Y, Z) labels.
        affine: (4, 4) voxel -> RAS mm of ``labels``.
    """
    axis, ascending = axis_along(affine, rule.world_axis)
    ordered = labels if ascending else np.flip(labels, axis)
    classes = rule.derive(ordered, axis)
    return axis, classes if ascending else classes[::-1]
