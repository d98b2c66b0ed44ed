"""Trivial generators that a model must beat, as samplers: inference and evaluation run them unchanged.

- ``NearestTrainingImage`` copies the training image whose mask best matches the given mask (memory);
- ``TissueMeans`` paints each label of the mask with the training images' mean intensity of that label.

Both see the mask on the model's grid, so their outputs pass through the same grid as the model's. A metric on
which one of them scores like the model does not measure what the model learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import nn

from .batches import without_meta
from .data import load_images
from .sampler import Sampler


def _onehot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(N, 1, *spatial) labels -> (N, num_labels, prod(spatial)) floats."""
    return torch.nn.functional.one_hot(labels[:, 0].long(), num_labels).movedim(-1, 1).flatten(2).float()


class TrainingSetBaseline(Sampler):
    """A generator that only looks up the training set: its images (N, 1, *spatial) in model units and one-hot
    masks (N, num_labels, P), loaded through the model's input transforms.

    Args:
        cases: the training cases (image and label).
        transforms: the model's input transforms (intensities scaled to [-1, 1]).
        num_labels: labels of the masks.
    """

    def __init__(self, cases: Sequence[dict], transforms, num_labels: int) -> None:
        self.images = load_images(cases, transforms)
        self.masks = _onehot(load_images(cases, transforms, key="label"), num_labels)
        self.num_labels = num_labels


class NearestTrainingImage(TrainingSetBaseline):
    """For each case's mask, the training image whose mask has the highest mean foreground Dice with it."""

    def generate(self, network: nn.Module, batch: dict, shape: Sequence[int], seed: int, device=None):
        query = _onehot(without_meta(batch["label"]), self.num_labels)[:, 1:]  # (B, L-1, P)
        masks = self.masks[:, 1:]
        inter = torch.einsum("blp,nlp->bnl", query, masks)
        sizes = query.sum(2)[:, None] + masks.sum(2)[None]  # (B, N, L-1)
        dice = torch.where(sizes > 0, 2 * inter / sizes.clamp(min=1), torch.nan).nanmean(2)
        return self.images[dice.argmax(1)].to(device), 0


class TissueMeans(TrainingSetBaseline):
    """Each label of a case's mask painted with the mean training intensity of that label."""

    @cached_property
    def means(self) -> torch.Tensor:
        """The mean training intensity of each label: (num_labels,)."""
        return (self.masks * self.images.flatten(1)[:, None]).sum((0, 2)) / self.masks.sum((0, 2)).clamp(min=1)

    def generate(self, network: nn.Module, batch: dict, shape: Sequence[int], seed: int, device=None):
        return self.means[without_meta(batch["label"]).long()].to(device), 0
