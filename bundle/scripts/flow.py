"""The MOTFM training target: the optimal-transport flow path.

``FlowPath`` turns clean images ``x1`` (B, C, *spatial) into a network input ``x_t``, the network's timesteps
(MONAI's 0..1000 scale) and the target velocity; ``batches.GenerativePrepareBatch`` feeds that to MONAI's
``SupervisedTrainer`` with the conditions, so the trainer's plain MSE loss trains the model. The DDPM baseline's
path is ``diffusion.DDPMPath``.
"""

from __future__ import annotations

import torch

TIME_SCALE = 1000.0  # flow time t in [0, 1] is shown to the network as t * TIME_SCALE
TIME_SCHEDULES = ("uniform", "logit_normal")


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


class FlowPath:
    """Optimal-transport conditional flow matching: x_t = (1 - t) x0 + t x1, target velocity x1 - x0.

    Args:
        time_schedule: how training times are drawn (``TIME_SCHEDULES``).
    """

    def __init__(self, time_schedule: str = "uniform") -> None:
        sample_times(1, time_schedule)  # validates the name
        self.time_schedule = time_schedule

    def __call__(
        self, x1: torch.Tensor, x0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (x_t, timesteps (B,), target) for clean images x1 (B, C, *spatial) and noise x0 like x1: drawn
        here (independent), or given already paired with x1 (OT coupling, reflow's pairs) and used as is."""
        x0 = torch.randn_like(x1) if x0 is None else x0
        t = sample_times(x1.shape[0], self.time_schedule, x1.device)
        return interpolate(x0, x1, t), t * TIME_SCALE, x1 - x0
