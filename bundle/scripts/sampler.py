"""Sampling: the one place that turns noise (or a noisy image) into images.

Inference, evaluation, training-time previews, the benchmark and the deploy app all call these classes, so a
better solver or a few-step checkpoint reaches every caller.

- ``FlowSampler`` integrates the learned velocity from t=0 (noise) or from a later time (denoising) to t=1.
- ``diffusion.DiffusionSampler`` (a ``Sampler``) runs the DDPM baseline with MONAI's DDPM or DDIM scheduler.
Both apply classifier-free guidance when ``guidance_scale != 1`` and the model has classes.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import nn
from tqdm import tqdm

from .batches import conditions
from .distributed import rank
from .flow import FlowPath
from .solvers import ADAPTIVE, SOLVERS, integrate


def case_noise(indices: Sequence[int], shape: Sequence[int], seed: int, device=None) -> torch.Tensor:
    """Gaussian noise (len(indices), *shape), each case's from its own generator: the same seed and case index
    give the same noise whatever the batch size, order or process that generates it."""
    out = []
    for i in indices:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i))
        out.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(out).to(device)


STEP_PROGRESS_FROM = 100


def step_progress(steps: Sequence, desc: str) -> Sequence:
    """``steps`` under a tqdm bar when there are ``STEP_PROGRESS_FROM`` or more (ancestral DDPM's 1000 steps take
    minutes a batch on a CPU, where a bar per batch would stand still); fewer steps, and ranks other than 0, go
    quietly."""
    return tqdm(steps, desc=desc, unit="step", leave=False, disable=len(steps) < STEP_PROGRESS_FROM or rank() > 0)


NOISE = ("per_case", "per_subject")


def noise_index(case: Mapping, noise: str = "per_case") -> int:
    """The index that picks a case's noise (``case_noise``, ``case_generators``): its own ``index`` ("per_case"), or
    a number of its ``subject``'s name ("per_subject": every plane of one subject or series starts from the same
    noise, so a 2D model's neighbouring planes, whose masks differ little, get images that differ little)."""
    if noise not in NOISE:
        raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
    if noise == "per_case":
        return int(case["index"])
    if "subject" not in case:
        raise ValueError(f"case {case.get('id', case.get('index'))} names no 'subject', which per_subject noise needs")
    return zlib.crc32(str(case["subject"]).encode())


def case_generators(indices: Sequence[int], seed: int, device=None) -> list[torch.Generator]:
    """One generator per case on ``device`` for a stochastic sampler's step noise, seeded from the seed and the case
    index (on another stream than ``case_noise``'s), so each case's steps don't depend on its batch."""
    return [torch.Generator(device or "cpu").manual_seed((int(seed) * 1_000_003 + int(i)) ^ 0x5EED) for i in indices]


def evaluations(cond: dict, guidance_scale: float) -> int:
    """Network evaluations per prediction: 2 with classifier-free guidance (the class and the "no class"
    prediction, run as one batch of 2B), else 1. NFE counts them all."""
    return 2 if guidance_scale != 1.0 and "cls" in cond else 1


def predict(
    network: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, cond: dict, guidance_scale: float = 1.0
) -> torch.Tensor:
    """The network's prediction, guided: u + s (c - u) with u the "no class" and c the class prediction.

    Guidance runs the two in one batch of 2B; with ``guidance_scale == 1`` or no class it is a plain call.
    """
    if evaluations(cond, guidance_scale) == 1:
        return network(x, timesteps, **cond)
    null = torch.full_like(cond["cls"], network.num_classes)
    both = {k: torch.cat([v, v]) for k, v in cond.items() if k != "cls"}
    both["cls"] = torch.cat([cond["cls"], null])
    out_c, out_u = network(torch.cat([x, x]), torch.cat([timesteps, timesteps]), **both).chunk(2)
    return out_u + guidance_scale * (out_c - out_u)


@torch.no_grad()
def warm_up(network: nn.Module, batch: dict, shape: Sequence[int], device=None) -> None:
    """One network call on a batch's size and the conditions it has, so the first call's one-time costs (memory,
    kernel choice; CUDA start-up on a GPU) stay out of timed sampling. ``shape``: (C, *spatial)."""
    use_mask = bool(network.num_labels) and "label" in batch
    cond = conditions(batch, use_mask, network.num_classes if "class" in batch else 0, device)
    x = torch.zeros(len(batch["index"]), *shape, device=device)
    network(x, torch.zeros(len(x), device=device), **cond)


class Sampler:
    """Base of the samplers: ``sampler(network, x, cond, t_start, generators) -> (images, NFE)``; ``generators``
    (one per case) drive a stochastic sampler's steps."""

    def __call__(self, network: nn.Module, x: torch.Tensor, cond: dict, t_start: float = 0.0, generators=None):
        raise NotImplementedError

    def generate(self, network: nn.Module, batch: dict, shape: Sequence[int], seed: int, device=None):
        """Samples one image per case of a collated batch (its ``index`` and, as the network needs, ``label`` and
        ``class``) from the case's own noise, or from the noise its ``noise_index`` names (``noise_index``);
        returns (images (B, *shape), NFE)."""
        indices = [int(i) for i in batch.get("noise_index", batch["index"])]
        noise = case_noise(indices, shape, seed, device)
        cond = conditions(batch, bool(network.num_labels), network.num_classes, device)
        return self(network, noise, cond, generators=case_generators(indices, seed, device))


class FlowSampler(Sampler):
    """Integrates dx/dt = v(x, t, cond) with an ODE solver.

    Args:
        solver: "euler", "midpoint", "heun", "rk4" or "dopri5".
        num_steps: solver steps (NFE = steps x evaluations per step; dopri5 chooses its own).
        guidance_scale: classifier-free guidance scale (1 = none).
        rtol, atol: the error tolerances of dopri5 (ignored by the fixed-step solvers).
    """

    def __init__(
        self,
        solver: str = "euler",
        num_steps: int = 10,
        guidance_scale: float = 1.0,
        rtol: float = 1e-4,
        atol: float = 1e-4,
    ) -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS} for a flow model, got {solver!r}")
        if solver not in ADAPTIVE and int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.solver, self.num_steps, self.guidance_scale = solver, num_steps, guidance_scale
        self.tolerances = {"rtol": rtol, "atol": atol}

    @torch.no_grad()
    def __call__(
        self, network: nn.Module, x: torch.Tensor, cond: dict, t_start: float = 0.0, generators=None
    ) -> tuple[torch.Tensor, int]:
        """x: noise (B, C, *spatial) at t_start (0 for pure noise); returns (images at t=1, NFE)."""

        def velocity(x_: torch.Tensor, t: float) -> torch.Tensor:
            timesteps = FlowPath.timesteps(torch.full((x_.shape[0],), t, device=x_.device))
            return predict(network, x_, timesteps, cond, self.guidance_scale)

        steps = partial(step_progress, desc=f"{self.solver} steps")
        x, calls = integrate(velocity, x, t_start, 1.0, self.solver, self.num_steps, progress=steps, **self.tolerances)
        return x, calls * evaluations(cond, self.guidance_scale)

    def denoise(
        self, network: nn.Module, noisy: torch.Tensor, sigma: float, cond: dict | None = None
    ) -> tuple[torch.Tensor, int]:
        """Denoises images (B, C, *spatial) in model units carrying Gaussian noise of std ``sigma``: places them on
        the flow at t = 1 / (1 + sigma) (x_t = t * noisy: ``FlowPath.place``) and integrates to t = 1. Returns
        (images, NFE)."""
        x_t, t = FlowPath.place(noisy, sigma)
        return self(network, x_t, cond or {}, t_start=t)
