"""Path and loss math: the OT flow path, time schedules, the DDPM path and the prepare-batch."""

import pytest
import torch

from scripts.batches import GenerativePrepareBatch
from scripts.diffusion import DDPM_SCHEDULE, DDPMPath
from scripts.flow import TIME_SCALE, FlowPath, sample_times


def test_interpolate_endpoints_and_midpoint():
    x0, x1 = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    assert torch.equal(FlowPath.interpolate(x0, x1, torch.zeros(3)), x0)
    assert torch.allclose(FlowPath.interpolate(x0, x1, torch.ones(3)), x1)
    assert torch.allclose(FlowPath.interpolate(x0, x1, torch.full((3,), 0.5)), (x0 + x1) / 2)
    t = torch.tensor([0.0, 0.25, 1.0])
    out = FlowPath.interpolate(x0, x1, t)
    for i in range(3):  # each case at its own time
        assert torch.allclose(out[i], (1 - t[i]) * x0[i] + t[i] * x1[i])


def test_flow_path_target_is_the_straight_velocity():
    torch.manual_seed(0)
    x1 = torch.randn(64, 1, 5, 5)
    x_t, timesteps, target = FlowPath()(x1)
    t = (timesteps / TIME_SCALE).view(-1, 1, 1, 1)
    assert timesteps.min() >= 0 and timesteps.max() <= TIME_SCALE
    # x_t + (1 - t) * (x1 - x0) = x1 on the straight path, and x_t - t * (x1 - x0) = x0 ~ N(0, 1)
    assert torch.allclose(x_t + (1 - t) * target, x1, atol=1e-5)
    x0 = x_t - t * target
    assert abs(x0.mean()) < 0.1 and abs(x0.std() - 1) < 0.1
    assert torch.equal(FlowPath.time(timesteps), timesteps / TIME_SCALE)
    assert torch.allclose(FlowPath.clean_estimate(x_t, t.view(-1), target), x1, atol=1e-5)


def test_a_noisy_image_is_placed_where_the_path_carries_its_noise():
    torch.manual_seed(0)
    x1, sigma = torch.randn(2, 1, 64, 64), 0.5
    x_t, t = FlowPath.place(x1 + sigma * torch.randn_like(x1), sigma)
    assert t == FlowPath.noise_time(sigma) == pytest.approx(2 / 3)
    # x_t = t x1 + (1 - t) x0 with x0 ~ N(0, 1): the residual carries unit noise
    assert abs(float(((x_t - t * x1) / (1 - t)).std()) - 1) < 0.03
    assert FlowPath.noise_time(0.0) == 1.0
    with pytest.raises(ValueError, match="sigma"):
        FlowPath.noise_time(-0.1)


@pytest.mark.parametrize("schedule", ["uniform", "logit_normal"])
def test_time_schedules(schedule):
    t = sample_times(20000, schedule)
    assert t.min() >= 0 and t.max() <= 1
    assert abs(t.mean() - 0.5) < 0.02
    middle = ((t > 0.25) & (t < 0.75)).float().mean()
    # uniform puts half the mass in the middle half; logit-normal more
    assert (abs(middle - 0.5) < 0.02) if schedule == "uniform" else (middle > 0.6)


def test_unknown_time_schedule_is_refused():
    with pytest.raises(ValueError, match="time schedule"):
        FlowPath("cosine")


def test_ddpm_path_matches_the_scheduler_formula():
    torch.manual_seed(0)
    path = DDPMPath(DDPM_SCHEDULE)
    x1 = torch.randn(16, 1, 4, 4)
    x_t, steps, noise = path(x1)
    abar = path.scheduler.alphas_cumprod[steps].view(-1, 1, 1, 1)
    assert steps.dtype == torch.long and steps.max() < DDPM_SCHEDULE["num_train_timesteps"]
    assert torch.allclose(x_t, abar.sqrt() * x1 + (1 - abar).sqrt() * noise, atol=1e-5)


def _batch():
    return {
        "image": torch.randn(6, 1, 8, 8),
        "label": torch.randint(0, 4, (6, 1, 8, 8)),
        "class": torch.tensor([0, 1, 2, 0, 1, 2]),
    }


def test_prepare_batch_passes_conditions_and_mse_target():
    x_t, target, args, kwargs = GenerativePrepareBatch(FlowPath(), True, 3, condition_dropout=0.0)(_batch())
    assert x_t.shape == target.shape == (6, 1, 8, 8) and args == ()
    assert set(kwargs) == {"timesteps", "mask", "cls"}
    assert torch.equal(kwargs["cls"], _batch()["class"])
    unconditional = GenerativePrepareBatch(FlowPath(), False, 0)(_batch())[3]
    assert set(unconditional) == {"timesteps"}


def test_condition_dropout_replaces_class_and_mask():
    batch = _batch()
    kwargs = GenerativePrepareBatch(FlowPath(), True, 3, condition_dropout=1.0)(batch)[3]
    assert torch.all(kwargs["cls"] == 3)  # the "no class" index
    assert torch.all(kwargs["mask"] == -1)  # "unknown"
    torch.manual_seed(1)
    kwargs = GenerativePrepareBatch(FlowPath(), True, 3, condition_dropout=0.5)(_batch())[3]
    dropped = kwargs["mask"].flatten(1).eq(-1).all(1)
    kept = kwargs["mask"].flatten(1).ge(0).all(1)
    assert torch.all(dropped | kept)  # a whole mask is dropped or kept, never part of one


def test_exact_ot_pairing_is_a_permutation_with_lower_cost():
    from scripts.coupling import ot_pairing

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g) + torch.tensor([3.0, 0.0])
    paired = ot_pairing(x0, x1, "exact")
    order = [int(torch.nonzero((x0 == p).all(1))[0]) for p in paired]
    assert sorted(order) == list(range(32))  # every noise sample used exactly once
    assert (paired - x1).pow(2).sum() < (x0 - x1).pow(2).sum()  # cheaper than the random (given) pairing
    sinkhorn = ot_pairing(x0, x1, "sinkhorn", reg=0.01)
    assert (sinkhorn - x1).pow(2).sum() < (x0 - x1).pow(2).sum()
    # exact OT is optimal: no random permutation does better
    for _ in range(20):
        perm = torch.randperm(32, generator=g)
        assert (paired - x1).pow(2).sum() <= (x0[perm] - x1).pow(2).sum() + 1e-9


def test_ot_pairing_stays_within_each_group():
    from scripts.coupling import ot_pairing

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)
    groups = torch.tensor([0, 1, 2] * 4)
    for method in ("exact", "sinkhorn"):
        paired = ot_pairing(x0, x1, method, reg=0.01, groups=groups)
        source = [int(torch.nonzero((x0 == p).all(1))[0]) for p in paired]
        assert all(groups[s] == groups[i] for i, s in enumerate(source))  # each image's noise from its own class
    whole = ot_pairing(x0, x1, "exact")
    assert any(groups[int(torch.nonzero((x0 == p).all(1))[0])] != groups[i] for i, p in enumerate(whole))
    single = torch.arange(12)  # every case its own condition: nothing to pair
    assert torch.equal(ot_pairing(x0, x1, "exact", groups=single), x0)
    with pytest.raises(ValueError, match="coupling"):
        ot_pairing(x0, x1, "greedy")


def test_coupled_prepare_batch_keeps_the_path_math():
    torch.manual_seed(0)
    batch = {"image": torch.randn(8, 1, 4, 4), "class": torch.tensor([0, 1] * 4)}
    x_t, target, _, kwargs = GenerativePrepareBatch(FlowPath(), False, 2, condition_dropout=0.0, coupling="exact")(
        batch
    )
    t = (kwargs["timesteps"] / TIME_SCALE).view(-1, 1, 1, 1)
    assert torch.allclose(x_t + (1 - t) * target, batch["image"], atol=1e-5)
    with pytest.raises(ValueError, match="coupling"):
        GenerativePrepareBatch(FlowPath(), False, 0, coupling="greedy")
    with pytest.raises(ValueError, match="mask conditioning"):
        GenerativePrepareBatch(FlowPath(), True, 3, coupling="exact")
