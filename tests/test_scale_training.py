"""Training at scale, piece by piece: the moving average under gradient accumulation, the LR schedule, activation
checkpointing, channels-last weights, and checkpoints written before these existed."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from scale_worker import run_job
from torch import nn

from conftest import CONFIGS, TINY_2D, TINY_3D
from scripts.networks import ConditionalUNet
from scripts.training import EMA, LearningRateSchedule, lr_factor

SMALL = {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 4}


def test_ema_follows_optimizer_steps_with_gradient_accumulation():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ema = EMA(net, optimizer, decay=0.5)
    start = [p.detach().clone() for p in net.parameters()]
    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(4)]
    trainer = SupervisedTrainer(
        "cpu", 1, data, net, optimizer, nn.MSELoss(), epoch_length=4, train_handlers=[ema], accumulation_steps=2
    )
    weights = {}  # the network after each iteration
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.update({e.state.iteration: _copy(net)}))
    trainer.run()

    assert torch.equal(weights[1][0], start[0]) and not torch.equal(weights[2][0], start[0])  # steps at 2 and 4
    expected = start
    for n in (2, 4):  # d = min(decay, (1 + n) / (10 + n))
        w = 1 - min(0.5, (1 + n) / (10 + n))
        expected = [e + w * (p - e) for e, p in zip(expected, weights[n])]
    for e, p in zip(expected, ema.model.parameters()):
        torch.testing.assert_close(p, e)


def _copy(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_lr_schedule_warmup_constant_cosine_and_cosine_tail():
    assert [lr_factor(i, "constant", 4, 100) for i in (0, 1, 3, 4, 1000)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(0, "cosine", 0, 10) == 1.0 and lr_factor(5, "cosine", 0, 10) == pytest.approx(0.5)
    assert lr_factor(10, "cosine", 0, 10) == lr_factor(50, "cosine", 0, 10) == 0.0  # and stays there
    assert lr_factor(7, "cosine", 2, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert [lr_factor(i, "cosine", 0, 10, decay_start=6) for i in (0, 6, 8)] == pytest.approx([1.0, 1.0, 0.5])

    net = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    data = [{"image": torch.randn(1, 1), "label": torch.randn(1, 1)}] * 3
    trainer = SupervisedTrainer("cpu", 2, data, net, optimizer, nn.MSELoss(), epoch_length=3)
    LearningRateSchedule(0.2, "cosine", warmup=2, total=6).attach(trainer)
    lrs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run()
    assert lrs == pytest.approx(
        [0.1, 0.2, 0.2, 0.2 * 0.5 * (1 + math.cos(math.pi / 4)), 0.1, 0.2 * 0.5 * (1 - 0.5**0.5)]
    )
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        LearningRateSchedule(0.2, "step")


def _saved_bytes(net: nn.Module, x: torch.Tensor, **kwargs) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, torch.full((x.shape[0],), 500.0), **kwargs).square().mean().backward()
    return total


def test_activation_checkpointing_keeps_results_and_names_and_saves_memory():
    kwargs = {"num_labels": 4, "num_classes": 3}
    torch.manual_seed(0)
    plain = ConditionalUNet(3, **SMALL, **kwargs)
    light = ConditionalUNet(3, **SMALL, **kwargs, activation_checkpointing=True)
    assert list(light.state_dict()) == list(plain.state_dict()) and light.config == plain.config
    light.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 16, 16, 16)
    cond = {"mask": torch.randint(0, 4, x.shape), "cls": torch.tensor([0, 3])}
    heavy_bytes, light_bytes = _saved_bytes(plain, x, **cond), _saved_bytes(light, x, **cond)
    assert light_bytes < heavy_bytes / 4, (light_bytes, heavy_bytes)
    for p, q in zip(plain.parameters(), light.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(light(x, torch.full((2,), 500.0), **cond), plain(x, torch.full((2,), 500.0), **cond))


@pytest.mark.parametrize("image_size,layout", [(TINY_2D, torch.channels_last), (TINY_3D, torch.channels_last_3d)])
def test_channels_last_network_for_2d_and_3d(image_size, layout):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")])
    parser.update({**image_size, "channels_last": True, "device": "cpu"})
    weight = parser.get_parsed_content("network").unet.down_blocks[0].resnets[0].conv1.conv.weight  # 8 -> 8 channels
    assert weight.is_contiguous(memory_format=layout) and not weight.is_contiguous()


def test_old_checkpoint_resumes_onto_a_cosine_tail(data_dir, small_datalist, tmp_path):
    """A checkpoint of an earlier bundle version (no grad scaler; a LambdaLR position of the old schedule) resumes
    with a cosine tail from its iteration on: the learning rate follows the trainer's iteration, and the card records
    the settings the tail replaced."""
    overrides = {
        **TINY_2D,
        "dataset_dir": str(data_dir),
        "datalist": str(small_datalist),
        "output_dir": str(tmp_path),
        "batch_size": 4,
        "lr": 1e-3,
        "checkpoint_interval": 1,
        "preview_interval": 10,
    }
    job = {"configs": ["train.json", "variants/mask_class_2d.json"], "overrides": overrides}
    run_job({**job, "overrides": {**overrides, "train#trainer#max_epochs": 1}})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    old = {k: state[k] for k in ("network", "optimizer", "ema", "trainer", "card")}
    torch.save({**old, "lr_scheduler": {"last_epoch": 1, "base_lrs": [1e-3]}}, tmp_path / "checkpoint.pt")

    tail = {"lr_schedule": "cosine", "lr_decay_start": 2, "train#trainer#max_epochs": 3}  # decays over iterations 2-6
    run_job({**job, "overrides": {**overrides, **tail}})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 6 and "lr_scheduler" not in state
    last_lr = state["optimizer"]["param_groups"][0]["lr"]  # that of iteration 5 (from 0)
    assert last_lr == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    provenance = state["card"]["provenance"]
    assert provenance["settings"]["lr_schedule"] == "cosine"
    assert provenance["settings_history"] == [{"until_iteration": 2, "lr_schedule": "constant", "lr_decay_start": 0}]
