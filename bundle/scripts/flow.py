"""The MOTFM training target and its algebra: the optimal-transport flow path.

``FlowPath`` owns every formula of the straight path from noise x0 (t = 0) to an image x1 (t = 1): the point
x_t, the target velocity, the network's timesteps (MONAI's 0..1000 scale), the time at which an image carrying noise
of a given std lies on the path, the clean estimate a velocity implies, and the sampling grid. Training
(``batches.GenerativePrepareBatch``), the sampler, denoising and distillation take it, as MONAI's schedulers own
both directions of the DDPM baseline (``diffusion.DDPMPath``).
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


def _broadcast(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """A float as it is, a per-case time (B,) or (B, 1, ..., 1) broadcastable against x."""
    return expand_like(t, x) if isinstance(t, torch.Tensor) else t


class FlowPath:
    """Optimal-transport conditional flow matching: x_t = (1 - t) x0 + t x1, target velocity x1 - x0.

    Times ``t`` are floats or per-case tensors (B,) in [0, 1]; images are (B, C, *spatial).

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
        return self.interpolate(x0, x1, t), self.timesteps(t), self.target(x0, x1)

    @staticmethod
    def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The point on the path at time t: (1 - t) x0 + t x1."""
        t = _broadcast(t, x1)
        return (1 - t) * x0 + t * x1

    @staticmethod
    def target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The path's velocity, the network's training target: x1 - x0."""
        return x1 - x0

    @staticmethod
    def timesteps(t: torch.Tensor) -> torch.Tensor:
        """Flow times (B,) -> the network's timesteps (B,) on MONAI's 0..1000 scale."""
        return t * TIME_SCALE

    @staticmethod
    def time(timesteps: torch.Tensor) -> torch.Tensor:
        """The network's timesteps (B,) -> flow times (B,); the inverse of ``timesteps``."""
        return timesteps / TIME_SCALE

    @staticmethod
    def clean_estimate(x_t: torch.Tensor, t: torch.Tensor | float, velocity: torch.Tensor) -> torch.Tensor:
        """The image a velocity at x_t points to, one Euler step to t = 1: x_t + (1 - t) v (E[x1 | x_t] for the
        learned field)."""
        return x_t + (1 - _broadcast(t, x_t)) * velocity

    @staticmethod
    def noise_time(sigma: float) -> float:
        """The time t at which x_t / t = x1 + sigma * noise carries noise of std ``sigma`` (relative to the model's
        [-1, 1] range): (1 - t) / t = sigma, so t = 1 / (1 + sigma)."""
        if sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {sigma}")
        return 1.0 / (1.0 + sigma)

    @classmethod
    def place(cls, noisy: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        """An image carrying noise of std ``sigma`` as a point of the path: (t * noisy, t) with t = ``noise_time``."""
        t = cls.noise_time(sigma)
        return t * noisy, t
