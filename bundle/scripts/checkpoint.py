"""Checkpoint files: weights with a model card, written atomically and loaded with ``weights_only=True``.

A model file (``model.pt``) holds ``{"model": state_dict, "ema": state_dict, "card": ModelCard.state_dict()}``.
The card says what the weights are (method, network configuration, image size, intensity range, variant), so a
checkpoint from another variant, method or shape is refused with a message instead of a shape error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .files import save_torch

WEIGHTS = ("ema", "model")


class ModelCard:
    """What a set of weights is: enough to rebuild its network and use it.

    Args:
        method: "flow" or "ddpm".
        network: the network's ``config`` (see ``ConditionalUNet``).
        image_size: the model's spatial shape.
        intensity_range: data units mapped to [-1, 1] in training (None until known).
        variant: the variant name, for messages.
        schedule: the DDPM noise schedule (``DDPMScheduler`` arguments); None for flow models.
        provenance: how the weights were made (training data and code fingerprints, settings, iterations, epochs,
            training time, validation-loss curve; see ``provenance.py`` and ``TrainingCheckpoint``).
        classes: what the classes of a class-conditioned network mean: ``{"names": [one per class], "rule": how a
            caller derives them from an image}`` (e.g. rule "axial_level" for the default data); None: undeclared.
            Kept only when the network has classes; names must be one per class.
    """

    def __init__(
        self,
        method: str,
        network: Mapping[str, Any],
        image_size: Sequence[int],
        intensity_range: Sequence[float] | None = None,
        variant: str = "",
        schedule: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        classes: Mapping[str, Any] | None = None,
    ) -> None:
        self.method, self.network, self.image_size = method, dict(network), [int(s) for s in image_size]
        self.intensity_range = None if intensity_range is None else [float(v) for v in intensity_range]
        self.variant, self.schedule = variant, None if schedule is None else dict(schedule)
        self.provenance = dict(provenance or {})
        num_classes = int(self.network.get("num_classes") or 0)
        self.classes = dict(classes) if classes and num_classes else None
        names = (self.classes or {}).get("names")
        if names is not None and len(names) != num_classes:
            raise ValueError(
                f"classes declares {len(names)} class names {list(names)} for a network of {num_classes} classes: "
                "set `classes` to what this data's classes mean (None: undeclared)"
            )

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "network": self.network,
            "image_size": self.image_size,
            "intensity_range": self.intensity_range,
            "variant": self.variant,
            "schedule": self.schedule,
            "provenance": self.provenance,
            "classes": self.classes,
        }

    def check(self, saved: Mapping[str, Any], source: str) -> None:
        """Raises ValueError naming ``source`` if ``saved`` (a card's state) describes another model."""
        problems = []
        if saved.get("method") != self.method:
            problems.append(f"it was trained with method {saved.get('method')!r}, this config uses {self.method!r}")
        if list(saved.get("image_size", [])) != self.image_size:
            problems.append(f"its image_size is {saved.get('image_size')}, this config's is {self.image_size}")
        net = saved.get("network", {})
        for key in sorted(set(net) | set(self.network)):
            if net.get(key) != self.network.get(key):
                problems.append(f"network {key}: checkpoint {net.get(key)!r}, config {self.network.get(key)!r}")
        if problems:
            variant = f" (variant {saved.get('variant')!r})" if saved.get("variant") else ""
            raise ValueError(
                f"checkpoint {source}{variant} does not fit this config (variant {self.variant!r}): "
                + "; ".join(problems)
                + ". Use the variant file, method and image_size the checkpoint was trained with."
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.check(state, "being resumed")
        self.intensity_range = state.get("intensity_range") or self.intensity_range
        self.provenance = dict(state.get("provenance") or {})


def read_checkpoint(path: str) -> dict:
    """Loads a checkpoint file with ``weights_only=True``; a missing or unreadable file is a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read as a weights-only torch file: {e}") from e


def read_model_file(path: str) -> dict:
    """A model file's contents (``read_checkpoint``); a file without weights and a card is a clear error."""
    ckpt = read_checkpoint(path)
    if "card" not in ckpt or "model" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a model file of this project (it has keys {sorted(ckpt)})")
    return ckpt


def save_model(path: str, network: nn.Module, ema: nn.Module | None, card: ModelCard) -> None:
    """Writes a model file: the weights, their moving average (if any) and the card."""
    state = {"model": network.state_dict(), "card": card.state_dict()}
    if ema is not None:
        state["ema"] = ema.state_dict()
    save_torch(state, path)


def load_model(path: str, network: nn.Module, card: ModelCard, weights: str = "ema") -> dict:
    """Loads ``weights`` ("ema" if the file has them, else the raw "model" weights) into ``network`` after
    checking the file's card against ``card``; returns the file's card (with its intensity range). A card written
    before cards declared their classes takes ``card``'s declaration."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    ckpt = read_model_file(path)
    card.check(ckpt["card"], path)
    network.load_state_dict(ckpt.get(weights, ckpt["model"]))
    saved = dict(ckpt["card"])
    if "classes" not in saved:
        saved["classes"] = card.classes
    return saved
