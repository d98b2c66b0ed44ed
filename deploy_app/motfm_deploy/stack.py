"""The stack of planes a 3D model gets as one volume, and the way back from the volume to each plane.

A series' planes form a stack when they share their size and orientation and their positions lie on one line, the
stack axis, without a missing plane. The volume's third axis is the step between positions along that line, so an
oblique (sheared, e.g. gantry-tilted) stack keeps its exact geometry in the volume's affine. A stack whose steps
differ by more than 1% is resampled to a regular step along its axis (labels take the nearest plane's, images are
interpolated linearly), and the model's output is interpolated back linearly at each plane's own position, so each
output plane lies on its own source plane. Refused, with the reason and the file: fewer than 3 planes, planes of
another size or orientation, positions off one line or shared by two planes, and a step over 1.5 times the median
step (a missing plane: a label plane cannot be made up).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .images import TOLERANCE, Plane

logger = logging.getLogger(__name__)

MIN_PLANES = 3  # fewer: no spacing to check, a missing plane cannot be told
GAP = 1.5  # a step over this many median steps is a missing plane
UNEVEN = 0.01  # steps differing by more than this fraction of the median step are resampled to a regular one
OFF_LINE = 0.1  # positions off the stack axis by more than this fraction of a pixel: not one stack


def along(arrays: np.ndarray, offsets: np.ndarray, at: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Interpolates along the stack axis: ``arrays`` (k, rows, columns) given at increasing ``offsets`` (k,) mm,
    k >= 2, taken at the offsets ``at`` (m,) mm, linearly or (``nearest``, for labels) from the nearest array;
    offsets beyond the ends take the end's. Returns (m, rows, columns), the dtype of ``arrays``."""
    at = np.clip(at, offsets[0], offsets[-1])
    upper = np.clip(np.searchsorted(offsets, at), 1, len(offsets) - 1)
    lower = upper - 1
    weight = (at - offsets[lower]) / (offsets[upper] - offsets[lower])
    if nearest:
        return arrays[np.where(weight > 0.5, upper, lower)]
    weight = weight.astype(np.float32)[:, None, None]
    return (arrays[lower] * (1 - weight) + arrays[upper] * weight).astype(arrays.dtype)


@dataclass(frozen=True)
class Stack:
    """The planes of a series as one volume of ``slices`` slices ``step`` mm apart along ``direction``, the
    first on ``origin``.

    Attributes:
        planes: the planes in the given order (the output's).
        offsets: (n,) mm of each plane along ``direction`` from ``origin``.
        origin: the plane at offset 0, the lowest along the stack; the volume takes its pixel grid.
        direction: (3,) unit vector of the stack axis (LPS), the line through the positions.
        step: mm between the volume's slices.
        slices: the volume's slice count.
        regular: whether the volume's slices are the planes themselves (steps within 1%), else it is resampled.
    """

    planes: Sequence[Plane]
    offsets: np.ndarray
    origin: Plane
    direction: np.ndarray
    step: float
    slices: int
    regular: bool

    @classmethod
    def of(cls, planes: Sequence[Plane]) -> Stack:
        """The stack of ``planes``; raises ValueError naming the plane (its file) when they do not form one."""
        if len(planes) < MIN_PLANES:
            raise ValueError(
                f"{planes[0].where}: a 3D model needs a stack of at least {MIN_PLANES} planes, the series has "
                f"{len(planes)} (with fewer, its spacing cannot be checked for a missing plane)"
            )
        first = planes[0]
        for plane in planes[1:]:
            if plane.shape != first.shape or not np.allclose(plane.orientation, first.orientation, atol=TOLERANCE):
                raise ValueError(f"{plane.where}: a 3D model needs one stack, but its size or orientation differs")
        positions = np.array([p.position for p in planes])
        order = np.argsort(positions @ first.normal, kind="stable")
        low, high = positions[order[0]], positions[order[-1]]
        span = float(np.linalg.norm(high - low))
        direction = (high - low) / span if span > 0 else first.normal
        if float(direction @ first.normal) < 0.1:
            raise ValueError(
                f"{first.where}: the series' planes do not advance along their normal; a 3D model needs a stack"
            )
        offsets = (positions - low) @ direction
        off_line = np.linalg.norm(positions - low - offsets[:, None] * direction, axis=1)
        if off_line.max() > OFF_LINE * float(first.spacing.min()):
            plane = planes[int(np.argmax(off_line))]
            raise ValueError(
                f"{plane.where}: a 3D model needs one stack, but this plane lies {off_line.max():.3g} mm off the line "
                "through the other planes' positions"
            )
        steps = np.diff(offsets[order])
        pairs = [(planes[i], planes[j]) for i, j in zip(order[:-1], order[1:])]
        for (a, b), step in zip(pairs, steps):
            if step <= OFF_LINE * float(first.spacing.min()):
                raise ValueError(f"{b.where}: shares its position with {a.where}; a 3D model needs a stack")
        median = float(np.median(steps))
        for k, ((a, b), step) in enumerate(zip(pairs, steps)):
            if step > GAP * median:
                raise ValueError(
                    f"a 3D model needs a whole stack, but planes are missing between {a.where} and {b.where} (at "
                    f"{offsets[order[k]]:.2f} and {offsets[order[k + 1]]:.2f} mm along the stack: a step of "
                    f"{step:.3g} mm, the median step is {median:.3g} mm)"
                )
        regular = float(steps.max() - steps.min()) <= UNEVEN * median
        slices = len(planes) if regular else int(round(float(offsets.max()) / median)) + 1
        stack = cls(planes, offsets, planes[order[0]], direction, float(offsets.max()) / (slices - 1), slices, regular)
        if not regular:
            logger.info(
                f"{first.where}: resampled an uneven stack of {len(planes)} planes (steps {steps.min():.3g}.."
                f"{steps.max():.3g} mm) to a regular step {stack.step:.3g} mm ({slices} slices) for the 3D model; "
                "each plane's output is interpolated back at its own position"
            )
        return stack

    @property
    def grid(self) -> np.ndarray:
        """(slices,) mm of the volume's slices along the stack from ``origin``."""
        return self.step * np.arange(self.slices)

    @property
    def voxels(self) -> int:
        """Voxels of the larger of the planes' stack and the volume."""
        rows, columns = self.origin.shape
        return rows * columns * max(len(self.planes), self.slices)

    def volume(self, arrays: np.ndarray, labels: bool) -> np.ndarray:
        """The planes' (n, rows, columns) arrays as the volume's (slices, rows, columns): the planes in stack
        order (regular), else taken from the nearest plane (``labels``) or interpolated linearly (images)."""
        order = np.argsort(self.offsets, kind="stable")
        arrays = np.asarray(arrays)[order]
        return arrays if self.regular else along(arrays, self.offsets[order], self.grid, nearest=labels)

    def to_planes(self, volume: np.ndarray) -> np.ndarray:
        """The inverse of ``volume``: (slices, rows, columns) -> each plane's (n, rows, columns) in the planes'
        order, its own slice (regular) or interpolated linearly at its own offset."""
        if not self.regular:
            return along(np.asarray(volume), self.grid, self.offsets)
        planes = np.empty_like(volume)
        planes[np.argsort(self.offsets, kind="stable")] = volume
        return planes
