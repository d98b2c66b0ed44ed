"""ODE solvers: NFE counts and exact results on known fields; sampling and denoising through them."""

import math

import pytest
import torch

from scripts.diffusion import DiffusionSampler
from scripts.flow import TIME_SCALE, FlowPath
from scripts.networks import ConditionalUNet
from scripts.sampler import FlowSampler, case_noise, predict
from scripts.solvers import SOLVERS, TABLEAUS, evaluations_per_step, integrate

# one step of each method on dx/dt = x multiplies x by its stability polynomial in h
GROWTH = {
    "euler": lambda h: 1 + h,
    "midpoint": lambda h: 1 + h + h**2 / 2,
    "heun": lambda h: 1 + h + h**2 / 2,
    "rk4": lambda h: 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24,
}


@pytest.mark.parametrize("solver", list(TABLEAUS))
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_linear_field_exact_result_and_nfe(solver, steps):
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x1, nfe = integrate(lambda x, t: x, x0, solver=solver, num_steps=steps)
    assert nfe == steps * evaluations_per_step(solver)
    assert torch.allclose(x1, x0 * GROWTH[solver](1 / steps) ** steps, rtol=1e-12)


@pytest.mark.parametrize("solver", list(TABLEAUS))
def test_time_dependent_field(solver):
    # dx/dt = t from x(0) = 0: x(1) = 1/2; Euler gives the left Riemann sum (N - 1) / (2N), the others are exact
    x1, _ = integrate(
        lambda x, t: torch.full_like(x, t), torch.zeros(1, dtype=torch.float64), solver=solver, num_steps=4
    )
    expected = 3 / 8 if solver == "euler" else 0.5
    assert x1.item() == pytest.approx(expected, abs=1e-12)


def test_partial_interval_and_bad_arguments():
    x, nfe = integrate(lambda x, t: torch.ones_like(x), torch.zeros(1), t0=0.6, solver="heun", num_steps=2)
    assert x.item() == pytest.approx(0.4) and nfe == 4
    with pytest.raises(ValueError, match="solver must be one of"):
        integrate(lambda x, t: x, torch.zeros(1), solver="rk45")
    with pytest.raises(ValueError, match="num_steps"):
        integrate(lambda x, t: x, torch.zeros(1), num_steps=0)


def test_adaptive_solver_reports_nfe_and_matches_rk4():
    field = lambda x, t: math.cos(3 * t) * x  # noqa: E731  smooth, solution x0 * exp(sin(3t) / 3)
    x0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x_dopri, nfe = integrate(field, x0, solver="dopri5", rtol=1e-7, atol=1e-9)
    x_rk4, _ = integrate(field, x0, solver="rk4", num_steps=50)
    assert "dopri5" in SOLVERS and nfe >= 6
    assert torch.allclose(x_dopri, x_rk4, rtol=1e-6)
    assert torch.allclose(x_dopri, x0 * math.exp(math.sin(3) / 3), rtol=1e-6)


def _net(**kw):
    """A tiny network with random weights everywhere (MONAI zero-initialises the output layer)."""
    torch.manual_seed(0)
    net = ConditionalUNet(2, [8, 16], [False, True], num_head_channels=8, norm_num_groups=4, **kw).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_one_euler_step_moves_noise_to_the_model_prediction():
    net = _net()
    noise = torch.randn(2, 1, 16, 16)
    image, nfe = FlowSampler("euler", 1)(net, noise, {})
    with torch.no_grad():
        expected = noise + net(noise, torch.zeros(2))
    assert nfe == 1
    assert not torch.allclose(image, noise)  # the reference code returned the noise unchanged here
    assert torch.allclose(image, expected, atol=1e-6)


def test_same_seed_same_noise_whatever_the_batch():
    a = case_noise([3, 4, 5], (1, 8, 8), seed=7)
    b = torch.cat([case_noise([3], (1, 8, 8), 7), case_noise([5, 4], (1, 8, 8), 7).flip(0)])
    assert torch.equal(a, b)
    assert not torch.equal(case_noise([3], (1, 8, 8), 7), case_noise([3], (1, 8, 8), 8))


@pytest.mark.parametrize("solver", ["ddpm", "ddim"])
def test_diffusion_sampling_gives_each_case_the_same_image_whatever_the_batch(solver):
    net, sampler = _net(), DiffusionSampler(solver, num_steps=4)
    batch = {"index": torch.tensor([3, 4, 5])}
    whole, nfe = sampler.generate(net, batch, (1, 16, 16), seed=7)
    parts = [sampler.generate(net, {"index": torch.tensor(i)}, (1, 16, 16), seed=7)[0] for i in ([5, 4], [3])]
    assert nfe == 4 and torch.allclose(whole, torch.cat([parts[1], parts[0].flip(0)]), atol=1e-5)
    other, _ = sampler.generate(net, batch, (1, 16, 16), seed=8)
    assert not torch.allclose(whole, other, atol=1e-3)


def test_guidance_combines_conditional_and_unconditional():
    net = _net(num_classes=3)
    x, t, cls = torch.randn(2, 1, 16, 16), torch.full((2,), 500.0), torch.tensor([0, 2])
    with torch.no_grad():
        cond = net(x, t, cls=cls)
        uncond = net(x, t, cls=torch.full_like(cls, 3))
        assert torch.allclose(predict(net, x, t, {"cls": cls}, 1.0), cond)
        assert torch.allclose(predict(net, x, t, {"cls": cls}, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_denoise_starts_on_the_flow_at_the_noise_time():
    net = _net()
    noisy = torch.randn(1, 1, 16, 16)
    out, nfe = FlowSampler("euler", 1).denoise(net, noisy, sigma=1.0)
    t = FlowPath.noise_time(1.0)
    with torch.no_grad():
        expected = t * noisy + (1 - t) * net(t * noisy, torch.full((1,), t * TIME_SCALE))
    assert t == 0.5 and nfe == 1
    assert torch.allclose(out, expected, atol=1e-6)


def test_dopri5_tolerances_reach_the_sampler_from_the_config():
    from monai.bundle import ConfigParser

    from conftest import CONFIGS

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"solver": "dopri5", "rtol": 1e-2, "atol": 1e-3})
    sampler = parser.get_parsed_content("sampler")
    assert sampler.tolerances == {"rtol": 1e-2, "atol": 1e-3}

    def network(x, timesteps, **cond):  # a curved field: dopri5 needs more steps for tighter tolerances
        return torch.sin(3 * x + timesteps[:, None, None, None] / TIME_SCALE)

    x = torch.randn(2, 1, 4, 4)
    loose = FlowSampler("dopri5", rtol=1e-2, atol=1e-2)(network, x, {})[1]
    tight = FlowSampler("dopri5", rtol=1e-8, atol=1e-8)(network, x, {})[1]
    assert tight > loose
