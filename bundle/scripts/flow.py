"""Training targets: the optimal-transport flow path of MOTFM and, for the baseline, the DDPM noising path.

Each path turns clean images ``x1`` (B, C, *spatial) into a network input ``x_t``, the network's timesteps
(MONAI's 0..1000 scale) and the regression target; ``GenerativePrepareBatch`` feeds that to MONAI's
``SupervisedTrainer`` with the conditions, so the trainer's plain MSE loss trains either model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.networks.schedulers import DDPMScheduler
from monai.utils import convert_to_tensor

TIME_SCALE = 1000.0  # flow time t in [0, 1] is shown to the network as t * TIME_SCALE
TIME_SCHEDULES = ("uniform", "logit_normal")
COUPLINGS = (None, "exact", "sinkhorn")
# the DDPM baseline's noise schedule (MONAI DDPMScheduler arguments), stored in its model card
DDPM_SCHEDULE = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0005,
    "beta_end": 0.0195,
    "prediction_type": "epsilon",
}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def sample_times(n: int, schedule: str = "uniform", device: torch.device | str | None = None) -> torch.Tensor:
    """Flow times (n,) in [0, 1]: uniform, or logit-normal (more weight mid-path, as in rectified-flow work)."""
    if schedule == "uniform":
        return torch.rand(n, device=device)
    if schedule == "logit_normal":
        return torch.sigmoid(torch.randn(n, device=device))
    raise ValueError(f"time schedule must be one of {TIME_SCHEDULES}, got {schedule!r}")


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point on the straight path from noise x0 (t=0) to data x1 (t=1): (1 - t) x0 + t x1; t is (B,)."""
    t = expand_like(t, x1)
    return (1 - t) * x0 + t * x1


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", reg: float = 0.05) -> torch.Tensor:
    """Reorders noise x0 (B, ...) to pair with images x1 (B, ...) by a minibatch optimal-transport plan on squared
    Euclidean costs (POT, as torchcfm's OT plan sampler): "exact" solves the assignment (the plan is a
    permutation); "sinkhorn" draws each image's noise from the entropic plan's column (``reg`` relative to the
    largest cost). The pairs then cross less, so the learned paths are straighter."""
    import ot

    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2).cpu().numpy()
    weights = torch.full((x0.shape[0],), 1.0 / x0.shape[0], dtype=torch.float64).numpy()
    if method == "exact":
        plan = torch.from_numpy(ot.emd(weights, weights, cost))
        return x0[plan.argmax(0).to(x0.device)]
    if method == "sinkhorn":
        plan = torch.from_numpy(ot.sinkhorn(weights, weights, cost / cost.max(), reg))
        return x0[torch.multinomial(plan.T.clamp(min=0) + 1e-30, 1).view(-1).to(x0.device)]
    raise ValueError(f"coupling must be one of {COUPLINGS}, got {method!r}")


class FlowPath:
    """Optimal-transport conditional flow matching: x_t = (1 - t) x0 + t x1, target velocity x1 - x0.

    Args:
        time_schedule: how training times are drawn (``TIME_SCHEDULES``).
        coupling: None (independent noise), or "exact" / "sinkhorn" minibatch OT pairing of noise and images.
    """

    def __init__(self, time_schedule: str = "uniform", coupling: str | None = None) -> None:
        sample_times(1, time_schedule)  # validates the name
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        self.time_schedule, self.coupling = time_schedule, coupling

    def __call__(
        self, x1: torch.Tensor, x0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (x_t, timesteps (B,), target) for clean images x1 (B, C, *spatial) and noise x0 like x1: drawn
        (and coupled) here, or given already paired with x1 (reflow's noise/image pairs) and used as is."""
        if x0 is None:
            x0 = torch.randn_like(x1)
            if self.coupling:
                x0 = ot_pairing(x0, x1, self.coupling)
        t = sample_times(x1.shape[0], self.time_schedule, x1.device)
        return interpolate(x0, x1, t), t * TIME_SCALE, x1 - x0


class DDPMPath:
    """DDPM noising with MONAI's scheduler: x_t = sqrt(a_t) x1 + sqrt(1 - a_t) eps; the target is eps
    ("epsilon") or v = sqrt(a_t) eps - sqrt(1 - a_t) x1 ("v_prediction", Salimans & Ho 2022), as the schedule's
    ``prediction_type`` says.

    Args:
        schedule: ``DDPMScheduler`` arguments (default ``DDPM_SCHEDULE``), ``prediction_type`` included.
    """

    def __init__(self, schedule: dict | None = None) -> None:
        schedule = {**DDPM_SCHEDULE, **(schedule or {})}
        if schedule["prediction_type"] not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {schedule['prediction_type']!r}")
        self.scheduler = DDPMScheduler(**schedule)

    def __call__(
        self, x1: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (x_t, timesteps (B,), target) for clean images x1 and noise like x1 (drawn here if None)."""
        noise = torch.randn_like(x1) if noise is None else noise
        steps = torch.randint(0, self.scheduler.num_train_timesteps, (x1.shape[0],), device=x1.device)
        x_t = self.scheduler.add_noise(x1, noise, steps)
        if self.scheduler.prediction_type == "v_prediction":
            return x_t, steps, self.scheduler.get_velocity(x1, noise, steps)
        return x_t, steps, noise


class GenerativePrepareBatch(PrepareBatch):
    """``prepare_batch`` for MONAI engines: a batch of {image, noise?, label?, class?} -> (x_t, target, (), kwargs).

    A batch's ``noise`` (like ``image``), when it has one, is the path's x0 paired with each image (reflow);
    otherwise the path draws it.

    kwargs hold ``timesteps`` and the conditions the network takes (``mask``, ``cls``). Condition dropout replaces,
    each with probability ``condition_dropout`` and independently, a case's class by the "no class" index and its
    mask by "unknown" (-1), so the model also learns the fields without them: classifier-free guidance needs the
    class-free one, denoising an image without a mask the mask-free one.

    Args:
        path: a ``FlowPath`` or ``DDPMPath``.
        use_mask: pass the ``label`` map as ``mask``.
        num_classes: pass ``class`` as ``cls`` when > 0.
        condition_dropout: probability of dropping each condition during training.
    """

    def __init__(self, path: FlowPath | DDPMPath, use_mask: bool, num_classes: int, condition_dropout: float = 0.1):
        self.path, self.use_mask, self.num_classes = path, use_mask, num_classes
        self.condition_dropout = condition_dropout

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x1 = plain(batchdata["image"], device)
        x_t, timesteps, target = self.path(x1, plain(batchdata["noise"], device) if "noise" in batchdata else None)
        cond = conditions(batchdata, self.use_mask, self.num_classes, device)
        if self.condition_dropout > 0:
            if "cls" in cond:
                drop = torch.rand(x1.shape[0], device=x1.device) < self.condition_dropout
                cond["cls"] = torch.where(drop, torch.full_like(cond["cls"], self.num_classes), cond["cls"])
            if "mask" in cond:
                drop = expand_like(torch.rand(x1.shape[0], device=x1.device) < self.condition_dropout, x1).bool()
                cond["mask"] = torch.where(drop, torch.full_like(cond["mask"], -1), cond["mask"])
        return x_t, target, (), {"timesteps": timesteps, **cond}


def plain(x: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """A plain tensor on ``device``: MONAI's MetaTensor would make every network operation track metadata."""
    return convert_to_tensor(x, device=device, track_meta=False)


def conditions(
    batchdata: Mapping[str, Any], use_mask: bool, num_classes: int, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """The network's condition kwargs from a batch: ``mask`` (B, 1, *spatial) and/or ``cls`` (B,)."""
    cond = {}
    if use_mask:
        cond["mask"] = plain(batchdata["label"], device)
    if num_classes:
        cond["cls"] = plain(batchdata["class"], device).view(-1).long()
    return cond
