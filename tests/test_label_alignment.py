"""Labels stay on their images through the model's transforms, at every scale, and under the random flip."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.data import model_transforms


def _phantom(size: int, centres: list[tuple[float, float]], radius: float) -> tuple[MetaTensor, MetaTensor]:
    """An image of bright discs on a dark background and its label map (1, size, size)."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    label = np.zeros((size, size), np.uint8)
    for i, (cy, cx) in enumerate(centres):
        label[(y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = 1 + i % 3
    image = np.where(label > 0, 100.0 + 50 * label, 0.0)
    return MetaTensor(torch.tensor(image[None], dtype=torch.float32)), MetaTensor(torch.tensor(label[None]))


def _centroid(weights: np.ndarray) -> np.ndarray:
    grid = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return (grid * weights).reshape(2, -1).sum(1) / weights.sum()


@pytest.mark.parametrize("factor", [1.5, 2.0, 2.9, 4.0])
def test_each_label_centroid_stays_on_its_image_structure(factor):
    rng = np.random.default_rng(int(factor * 10))
    size, out = int(round(48 * factor)), 48
    radius = 4.5 * factor
    centres = [tuple(rng.uniform(radius + 2, size - radius - 2, 2)) for _ in range(12)]
    offsets = []
    for centre in centres:  # one disc at a time, so each centroid is that structure's alone
        image, label = _phantom(size, [centre], radius)
        d = model_transforms([out, out], num_labels=4, intensity_range=None)({"image": image, "label": label})
        img, lab = d["image"][0].numpy(), d["label"][0].numpy()
        offsets.append(_centroid(lab > 0) - _centroid(img))
    bias = np.abs(np.mean(offsets, axis=0))
    assert bias.max() < 0.1, f"labels sit {bias} output pixels off their images at factor {factor}"


def test_flipped_label_of_a_symmetric_phantom_matches_the_original():
    size = 173  # an odd grid, resized by about 2.7 as the template's slices are
    half = [(50.0, 40.0), (110.0, 60.5), (140.0, 75.0)]
    centres = half + [(cy, size - 1 - cx) for cy, cx in half]  # mirror images about the middle column
    image, label = _phantom(size, centres, radius=9.0)
    d = model_transforms([64, 64], num_labels=4, intensity_range=None)({"image": image, "label": label})
    lab = d["label"][0].numpy()
    assert lab.any()
    mirrored = lab[:, ::-1]
    foreground = (lab > 0) | (mirrored > 0)
    agreement = (lab == mirrored)[foreground].mean()
    assert agreement > 0.97, f"the flipped label agrees with the original on only {agreement:.2%} of its pixels"
