"""Downstream networks trained on real or synthetic data: a tissue segmenter and a class classifier.

The segmenter trained on the real training split also measures mask consistency: how well a generated image
follows its conditioning mask. Both are small MONAI networks trained with MONAI's ``SupervisedTrainer`` and
saved as model files (weights + card, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import Classifier, UNet
from torch import nn

from .batches import without_meta
from .checkpoint import ModelCard, load_model, save_model
from .data import input_transforms, load_images
from .metrics import dice_per_case
from .training import seed_all

TASKS = {"segmenter": "label", "classifier": "class"}  # task -> the case key it predicts


def build(task: str, image_size: Sequence[int], num_outputs: int) -> nn.Module:
    """A small segmentation UNet (num_outputs = labels) or CNN classifier (num_outputs = classes)."""
    if task == "segmenter":
        return UNet(len(image_size), 1, num_outputs, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)
    if task == "classifier":
        levels = max(1, min(4, int(math.log2(min(image_size))) - 2))  # feature maps no smaller than 4 x 4
        return Classifier((1, *image_size), num_outputs, channels=(16, 32, 64, 128)[:levels], strides=(2,) * levels)
    raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")


def card(task: str, image_size: Sequence[int], num_outputs: int, intensity_range=None, provenance=None) -> ModelCard:
    return ModelCard(task, {"num_outputs": num_outputs}, image_size, intensity_range, provenance=provenance)


def train(
    task: str,
    cases: Sequence[dict],
    image_size: Sequence[int],
    num_outputs: int,
    intensity_range: Sequence[float],
    num_labels: int = 0,
    iterations: int = 600,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Trains a ``task`` network on ``cases`` (with augmentation) for about ``iterations`` steps; returns it.

    Args:
        cases: cases with ``image`` and the target (``label`` for the segmenter, ``class`` for the classifier).
        num_outputs: labels (segmenter) or classes (classifier).
        intensity_range: the data units mapped to [-1, 1] (the generative model's, so inputs look alike).
        num_labels: label count for checking masks (segmenter); 0 skips the check.
    """
    seed_all(seed)
    target = TASKS[task]
    network = build(task, image_size, num_outputs).to(device)
    transforms = input_transforms(image_size, num_labels, intensity_range, augment="affine")
    dataset = CacheDataset(list(cases), transforms, progress=False)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, drop_last=True)

    def prepare_batch(batch, device=None, non_blocking=False, **kwargs):
        y = without_meta(batch[target], device)
        return without_meta(batch["image"], device), (y.long().view(-1) if task == "classifier" else y)

    loss = DiceCELoss(to_onehot_y=True, softmax=True) if task == "segmenter" else nn.CrossEntropyLoss()
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=math.ceil(iterations / len(loader)),
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr),
        loss_function=loss,
        prepare_batch=prepare_batch,
    )
    trainer.run()
    return network.eval()


@torch.no_grad()
def predict(network: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Label maps (N, 1, *spatial) from a segmenter, or classes (N,) from a classifier, for images (N, 1, ...)."""
    device = next(network.parameters()).device
    out = torch.cat([network(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    return out.argmax(1, keepdim=out.dim() > 2)


def scores_per_case(task: str, network: nn.Module, cases: Sequence[dict], transforms, num_outputs: int) -> torch.Tensor:
    """Foreground Dice (segmenter; nan where a case and its prediction have no foreground) or 1/0 for a right/wrong
    class (classifier) of ``network`` on each of ``cases``: (N,)."""
    predicted = predict(network, load_images(cases, transforms))
    if task == "segmenter":
        return dice_per_case(load_images(cases, transforms, key="label"), predicted, num_outputs)
    return (predicted == torch.tensor([int(c["class"]) for c in cases])).float()


def score(task: str, network: nn.Module, cases: Sequence[dict], transforms, num_outputs: int) -> float:
    """Mean foreground Dice (segmenter) or accuracy (classifier) of ``network`` on ``cases``."""
    return float(torch.nanmean(scores_per_case(task, network, cases, transforms, num_outputs)))


def encoder_levels(segmenter: nn.Module) -> list[nn.Module]:
    """The encoder blocks of a MONAI ``UNet`` segmenter, from the first down block to the bottom block."""
    levels, node = [], segmenter.model
    while isinstance(node, nn.Sequential):
        levels.append(node[0])
        node = node[1].submodule  # the SkipConnection's inner part: the next level, or the bottom block
    return [*levels, node]


@torch.no_grad()
def segmenter_features(segmenter: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Image features from a segmenter trained here: every encoder block's output, averaged over space and
    concatenated, for images (N, 1, *spatial) -> (N, 16 + 32 + 64 + 128). They feed the feature-space Frechet
    distance and KID of evaluation (not Inception features: these come from a network of this project, trained on
    the training subjects only)."""
    outputs: list[torch.Tensor] = []
    levels = encoder_levels(segmenter)
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.flatten(2).mean(2))) for m in levels]
    device = next(segmenter.parameters()).device
    parts = []
    try:
        for i in range(0, len(images), batch_size):
            outputs.clear()
            segmenter(images[i : i + batch_size].to(device))
            parts.append(torch.cat(outputs, dim=1).cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(parts)


def save(
    path: str, task: str, network: nn.Module, image_size, num_outputs: int, intensity_range, provenance=None
) -> None:
    """Writes a model file; ``provenance`` (see ``provenance.training_provenance``) goes into its card."""
    save_model(path, network, None, card(task, image_size, num_outputs, intensity_range, provenance))


def load(path: str, task: str, image_size: Sequence[int], num_outputs: int, device="cpu") -> nn.Module:
    """Loads a saved ``task`` network, refusing one made for another task, image size or label/class count."""
    network = build(task, image_size, num_outputs)
    load_model(path, network, card(task, image_size, num_outputs), weights="model")
    return network.to(device).eval()
