"""Planes of a volume: which voxel axis is axial, and the array and affine of one plane as a 2D image.

A plane of a NIfTI volume (X, Y, Z) along voxel axis ``axis`` is the 2D image of the other two axes, in their
order, whose affine keeps their columns and moves the origin to the plane's position; read back, it lies exactly
where it lay in the volume. The default data's slices, the converters' and ``slice_volumes.py``'s, and the planes
a 2D model generates from a mask volume are all made here.
"""

from __future__ import annotations

import numpy as np

MIN_PLANES = 3  # a volume with fewer planes along its axial axis has no level to speak of


def axis_along(affine: np.ndarray, world: int = 2) -> tuple[int, bool]:
    """The voxel axis of a volume closest to RAS axis ``world`` (0 x, 1 y, 2 z: feet to head), and whether its
    index increases along it.

    Args:
        affine: (4, 4) voxel -> RAS mm.
        world: the RAS axis.
    """
    column = np.asarray(affine, dtype=np.float64)[world, :3]
    axis = int(np.argmax(np.abs(column)))
    return axis, bool(column[axis] > 0)


def plane_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The affine (4, 4) of plane ``index`` along voxel ``axis`` of a volume with ``affine``, as a 2D image of the
    other two axes (in order): their columns, the plane's normal column, and the origin moved to the plane."""
    affine = np.asarray(affine, dtype=np.float64)
    in_plane = [a for a in range(3) if a != axis]
    out = affine[:, [*in_plane, axis, 3]].copy()
    out[:3, 3] += affine[:3, axis] * index
    return out


def take_plane(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Plane ``index`` (the two other axes, in order) of a volume ``array`` (X, Y, Z) along ``axis``."""
    return np.take(array, index, axis=axis)


def labelled_planes(labels: np.ndarray, axis: int, step: int, min_fraction: float = 0.0) -> list[int]:
    """Every ``step``-th plane along ``axis`` from the first plane holding a label > 0 to the last, less those
    whose labelled fraction is below ``min_fraction``.

    Args:
        labels: (X, Y, Z) labels.
        axis: the voxel axis of the planes.
        step: planes between kept planes (>= 1).
        min_fraction: the smallest fraction of a plane's voxels with a label > 0.
    """
    others = tuple(a for a in range(labels.ndim) if a != axis)
    area = np.mean(labels > 0, axis=others)
    labelled = np.flatnonzero(area)
    if not labelled.size:
        return []
    return [k for k in range(int(labelled[0]), int(labelled[-1]) + 1, max(1, int(step))) if area[k] >= min_fraction]
