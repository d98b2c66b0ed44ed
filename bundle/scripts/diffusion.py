"""The DDPM baseline on the same networks: its noise schedules, its training path and its samplers.

``DDPMPath`` is the training target (noise or v); ``DiffusionSampler`` samples with MONAI's DDPM (ancestral) or
DDIM scheduler. The schedule, prediction type included, is stored in the model card, so sampling uses what the
model was trained with.
"""

from __future__ import annotations

from functools import partial

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from .sampler import Sampler, evaluations, predict, step_progress

# named noise schedules (MONAI DDPMScheduler arguments)
NOISE_SCHEDULES = {
    "linear_beta": {"schedule": "linear_beta", "beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear_beta": {"schedule": "scaled_linear_beta", "beta_start": 0.0005, "beta_end": 0.0195},
    "cosine": {"schedule": "cosine"},
}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def ddpm_schedule(noise_schedule: str = "scaled_linear_beta", prediction_type: str = "epsilon") -> dict:
    """``DDPMScheduler`` arguments: 1000 timesteps, a named noise schedule of ``NOISE_SCHEDULES`` (linear betas as
    in Ho et al. 2020, scaled-linear as in latent diffusion, cosine as in Nichol & Dhariwal 2021) and what the
    network predicts ("epsilon" or "v_prediction")."""
    if noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {tuple(NOISE_SCHEDULES)}, got {noise_schedule!r}")
    return checked_schedule(
        {"num_train_timesteps": 1000, **NOISE_SCHEDULES[noise_schedule], "prediction_type": prediction_type}
    )


def checked_schedule(schedule: dict | None) -> dict:
    """A model's schedule (``DDPMScheduler`` arguments; None: ``DDPM_SCHEDULE``), its prediction type checked
    ("epsilon" when the card does not say)."""
    schedule = {"prediction_type": "epsilon", **(schedule or DDPM_SCHEDULE)}
    if schedule["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {schedule['prediction_type']!r}")
    return schedule


DDPM_SCHEDULE = ddpm_schedule()


class DDPMPath:
    """DDPM noising with MONAI's scheduler: x_t = sqrt(a_t) x1 + sqrt(1 - a_t) eps; the target is eps
    ("epsilon") or v = sqrt(a_t) eps - sqrt(1 - a_t) x1 ("v_prediction", Salimans & Ho 2022), as the schedule's
    ``prediction_type`` says.

    Args:
        schedule: ``DDPMScheduler`` arguments (see ``ddpm_schedule``; default ``DDPM_SCHEDULE``).
    """

    def __init__(self, schedule: dict | None = None) -> None:
        self.scheduler = DDPMScheduler(**checked_schedule(schedule))

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


# MONAI's DDIM step clips its clean-image estimate to [-1, 1] but keeps the network's noise estimate, so the two
# disagree; a background at -1, estimated a little low half the time, is lifted at every step, and the error grows
# with the step count (250 steps: grey backgrounds). DDIM is run unclipped, as the ODE of the network's estimates.
# The ancestral step clips consistently (its posterior mean is built from the clipped estimate) and keeps the clip.
DIFFUSION_SOLVERS = {"ddpm": DDPMScheduler, "ddim": partial(DDIMScheduler, clip_sample=False)}


def ddim_timesteps(num_train_timesteps: int, num_steps: int) -> torch.Tensor:
    """DDIM's timesteps spaced as MONAI's ``DDIMScheduler.step`` moves, by num_train_timesteps // num_steps:
    (num_steps - 1 - k) * that, k = 0 .. num_steps - 1, so every step lands on the timestep the network is told
    next and the last on the clean image. (MONAI's ``set_timesteps`` spaces them by linspace(T - 1, 0), which at
    10 steps puts every step 11 timesteps away from the next one the network sees.)"""
    return torch.arange(num_steps - 1, -1, -1) * (num_train_timesteps // num_steps)


class DiffusionSampler(Sampler):
    """Reverse diffusion with MONAI's DDPM or DDIM scheduler; NFE counts every network call.

    Args:
        solver: "ddpm" (ancestral sampling, meant for all training steps) or "ddim" (deterministic, fewer steps).
        num_steps: inference steps, 1 .. the training timesteps.
        guidance_scale: classifier-free guidance scale (1 = none).
        schedule: the noise schedule and prediction type the model was trained with (``DDPMScheduler``
            arguments; see its card).
    """

    def __init__(self, solver: str = "ddim", num_steps: int = 50, guidance_scale: float = 1.0, schedule=None):
        if solver not in DIFFUSION_SOLVERS:
            raise ValueError(f"solver must be one of {tuple(DIFFUSION_SOLVERS)} for the DDPM baseline, got {solver!r}")
        schedule = checked_schedule(schedule)
        if not 1 <= int(num_steps) <= schedule["num_train_timesteps"]:
            raise ValueError(
                f"num_steps must be 1 .. {schedule['num_train_timesteps']} (the training timesteps), got {num_steps}"
            )
        self.scheduler = DIFFUSION_SOLVERS[solver](**schedule)
        self.solver, self.num_steps, self.guidance_scale = solver, int(num_steps), guidance_scale

    @torch.no_grad()
    def __call__(
        self, network: nn.Module, x: torch.Tensor, cond: dict, t_start: float = 0.0, generators=None
    ) -> tuple[torch.Tensor, int]:
        """x: noise (B, C, *spatial); returns (images, NFE). DDPM draws each case's step noise from its own
        generator of ``generators`` (B; None: the global one), so a case's image doesn't depend on its batch."""
        if t_start != 0.0:
            raise ValueError("the DDPM baseline samples from pure noise only (t_start=0)")
        self.scheduler.set_timesteps(self.num_steps, device=x.device)
        if self.solver == "ddim":
            self.scheduler.timesteps = ddim_timesteps(self.scheduler.num_train_timesteps, self.num_steps).to(x.device)
        nfe = 0
        for t in step_progress(self.scheduler.timesteps, f"{self.solver} steps"):
            timesteps = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            eps = predict(network, x, timesteps, cond, self.guidance_scale)
            nfe += evaluations(cond, self.guidance_scale)
            if self.solver == "ddpm" and generators is not None:
                x = torch.cat(
                    [self.scheduler.step(e[None], int(t), c[None], g)[0] for e, c, g in zip(eps, x, generators)]
                )
            else:
                x, _ = self.scheduler.step(eps, int(t), x)
        return x, nfe
