"""From a collated batch to the network's inputs: plain tensors, the conditions, and MONAI's prepare-batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import convert_to_tensor

from .coupling import COUPLINGS, ot_pairing
from .flow import expand_like


class GenerativePrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI engines: a batch of {image, noise?, label?, class?} -> (x_t, target, (), kwargs).

    A batch's ``noise`` (like ``image``), when it has one, is the path's x0 paired with each image (reflow);
    otherwise it is drawn here, independent of the images or coupled with them by minibatch OT within each class.

    kwargs hold ``timesteps`` and the conditions the network takes (``mask``, ``cls``). Condition dropout replaces,
    each with probability ``condition_dropout`` and independently, a case's class by the "no class" index and its
    mask by "unknown" (-1), so the model also learns the fields without them: classifier-free guidance needs the
    class-free one, denoising an image without a mask the mask-free one.

    Args:
        path: a ``flow.FlowPath`` or ``diffusion.DDPMPath``.
        use_mask: pass the ``label`` map as ``mask``.
        num_classes: pass ``class`` as ``cls`` when > 0.
        condition_dropout: probability of dropping each condition during training.
        coupling: None (independent noise), or "exact" / "sinkhorn": ``coupling.ot_pairing`` of the drawn noise
            with the images, among the cases of one class (conditional OT). With mask conditioning every case is a
            condition of its own, so there is nothing to pair, and it is refused.
    """

    def __init__(
        self,
        path: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        use_mask: bool,
        num_classes: int,
        condition_dropout: float = 0.1,
        coupling: str | None = None,
    ):
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if coupling and use_mask:
            raise ValueError(
                f"coupling {coupling!r} with mask conditioning: minibatch OT pairs noise only among cases of one "
                "condition, and every mask is a condition of its own, so nothing would be paired (pairing across "
                "masks biases each mask's noise towards other cases' images); set coupling to null"
            )
        self.path, self.use_mask, self.num_classes = path, use_mask, num_classes
        self.condition_dropout, self.coupling = condition_dropout, coupling

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x1 = without_meta(batchdata["image"], device)
        cond = conditions(batchdata, self.use_mask, self.num_classes, device)
        if "noise" in batchdata:
            x0 = without_meta(batchdata["noise"], device)
        else:
            x0 = torch.randn_like(x1)
            if self.coupling:
                x0 = ot_pairing(x0, x1, self.coupling, groups=cond.get("cls"))
        x_t, timesteps, target = self.path(x1, x0)
        if self.condition_dropout > 0:
            if "cls" in cond:
                drop = torch.rand(x1.shape[0], device=x1.device) < self.condition_dropout
                cond["cls"] = torch.where(drop, torch.full_like(cond["cls"], self.num_classes), cond["cls"])
            if "mask" in cond:
                drop = expand_like(torch.rand(x1.shape[0], device=x1.device) < self.condition_dropout, x1).bool()
                cond["mask"] = torch.where(drop, torch.full_like(cond["mask"], -1), cond["mask"])
        return x_t, target, (), {"timesteps": timesteps, **cond}


class ReconstructionPrepareBatch(PrepareBatch):
    """``prepare_batch`` for an autoencoder: a batch of {image} -> (image, image, (), {}): the input is the target."""

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x = without_meta(batchdata["image"], device)
        return x, x, (), {}


def without_meta(x: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """A plain tensor on ``device``: MONAI's MetaTensor would make every network operation track metadata."""
    return convert_to_tensor(x, device=device, track_meta=False)


def conditions(
    batchdata: Mapping[str, Any], use_mask: bool, num_classes: int, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """The network's condition kwargs from a batch: ``mask`` (B, 1, *spatial) and/or ``cls`` (B,)."""
    cond = {}
    if use_mask:
        cond["mask"] = without_meta(batchdata["label"], device)
    if num_classes:
        cond["cls"] = without_meta(batchdata["class"], device).view(-1).long()
    return cond
