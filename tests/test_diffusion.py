"""The DDPM baseline's samplers: DDIM steps that land where the network is evaluated, epsilon and v prediction,
NFE that counts guided calls, and settings refused before any work."""

import pytest
import torch
from torch import nn

from scripts.diffusion import DDPM_SCHEDULE, DDPMPath, DiffusionSampler
from scripts.sampler import STEP_PROGRESS_FROM, FlowSampler


class Oracle(nn.Module):
    """A denoiser that knows the clean image x0: it returns the exact epsilon or v for the timestep it is told,
    and records the timesteps."""

    num_labels = 0

    def __init__(self, x0: torch.Tensor, prediction_type: str, num_classes: int = 0) -> None:
        super().__init__()
        self.x0, self.prediction_type, self.num_classes = x0, prediction_type, num_classes
        self.alphas = DDPMPath().scheduler.alphas_cumprod
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **cond) -> torch.Tensor:
        self.seen.append(int(timesteps[0]))
        a = self.alphas[timesteps.long()].view(-1, *[1] * (x.dim() - 1))
        x0 = self.x0.repeat(len(x) // len(self.x0), *[1] * (x.dim() - 1))
        if self.prediction_type == "v_prediction":
            return (a.sqrt() * x - x0) / (1 - a).sqrt()
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


@pytest.mark.parametrize("steps", [7, 10, 30, 50, 250, 1000])
def test_every_ddim_step_lands_on_the_next_timestep_the_network_sees(steps):
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    oracle = Oracle(x0, "epsilon")
    images, nfe = DiffusionSampler("ddim", steps)(oracle, torch.randn(2, 1, 8, 8), {})
    stride = DDPM_SCHEDULE["num_train_timesteps"] // steps
    assert nfe == len(oracle.seen) == steps
    assert all(a - stride == b for a, b in zip(oracle.seen, oracle.seen[1:]))
    assert oracle.seen[-1] - stride < 0  # the last step lands on the clean image
    assert torch.allclose(images, x0, atol=1e-4)  # so a perfect denoiser is reproduced at any step count


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_follows_estimates_outside_the_data_range_at_any_step_count(prediction_type):
    """DDIM is the ODE of the network's own estimates: with MONAI's clip_sample, a clean-image estimate below -1
    (a background at -1 estimated slightly low) is clipped while the noise estimate is kept, the two disagree, and
    the error grows with the step count (grey backgrounds at 250 steps); the sampler turns that clip off."""
    schedule = {**DDPM_SCHEDULE, "prediction_type": prediction_type}
    x0 = torch.full((2, 1, 8, 8), -1.05)
    x0[..., 2:6, 2:6] = 0.4
    for steps in (10, 250):
        images, _ = DiffusionSampler("ddim", steps, schedule=schedule)(
            Oracle(x0, prediction_type), torch.randn_like(x0), {}
        )
        assert torch.allclose(images, x0, atol=1e-3), steps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_both_prediction_types_train_on_their_target_and_sample_back(prediction_type):
    schedule = {**DDPM_SCHEDULE, "prediction_type": prediction_type}
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    x_t, steps, target = DDPMPath(schedule)(x0)
    oracle = Oracle(x0, prediction_type)
    assert torch.allclose(oracle(x_t, steps), target, atol=1e-4)  # the path's target is what the oracle predicts
    for solver, n in (("ddim", 10), ("ddpm", 20)):
        images, _ = DiffusionSampler(solver, n, schedule=schedule)(oracle, torch.randn(3, 1, 8, 8), {})
        assert torch.allclose(images, x0, atol=1e-3)


def test_nfe_counts_both_calls_of_guidance():
    cond = {"cls": torch.tensor([0, 1])}
    oracle = Oracle(torch.zeros(1, 1, 8, 8), "epsilon", num_classes=3)
    assert DiffusionSampler("ddim", 5, guidance_scale=2.0)(oracle, torch.randn(2, 1, 8, 8), cond)[1] == 10
    assert DiffusionSampler("ddim", 5, guidance_scale=1.0)(oracle, torch.randn(2, 1, 8, 8), cond)[1] == 5
    assert FlowSampler("midpoint", 3, guidance_scale=1.5)(oracle, torch.randn(2, 1, 8, 8), cond)[1] == 12
    assert FlowSampler("midpoint", 3, guidance_scale=1.5)(oracle, torch.randn(2, 1, 8, 8), {})[1] == 6  # no class


def test_long_samplers_show_progress_by_step(capsys):
    """Ancestral DDPM's 1000 steps take minutes a batch on a CPU: a bar counts its steps; a few-step sampler's
    stays quiet."""
    oracle = Oracle(torch.zeros(1, 1, 8, 8), "epsilon")
    DiffusionSampler("ddpm", STEP_PROGRESS_FROM)(oracle, torch.randn(1, 1, 8, 8), {})
    assert f"ddpm steps:   0%|          | 0/{STEP_PROGRESS_FROM}" in capsys.readouterr().err
    DiffusionSampler("ddim", STEP_PROGRESS_FROM - 1)(oracle, torch.randn(1, 1, 8, 8), {})
    FlowSampler("euler", 10)(oracle, torch.randn(1, 1, 8, 8), {})
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DiffusionSampler("ddim", 0), "num_steps must be 1 .. 1000"),
        (lambda: DiffusionSampler("ddim", 1001), "num_steps must be 1 .. 1000"),
        (lambda: DiffusionSampler("euler", 10), "for the DDPM baseline"),
        (lambda: DiffusionSampler("ddim", 10, schedule={"prediction_type": "sample"}), "prediction_type"),
        (lambda: DDPMPath({"prediction_type": "x0"}), "prediction_type"),
        (lambda: FlowSampler("euler", 0), "num_steps must be >= 1"),
        (lambda: FlowSampler("ddim", 10), "for a flow model"),
    ],
)
def test_sampler_settings_that_cannot_work_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
