"""Consistency distillation (scripts/distillation.py, distill.json): the target on an analytic flow, a tiny run from a
teacher that inference samples in one step, and the refusal of a teacher that does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import USER_ERRORS, error_text, sample, train
from scripts.checkpoint import read_checkpoint
from scripts.distillation import ConsistencyPrepareBatch, target_network, velocity_target
from scripts.flow import TIME_SCALE, FlowPath

pytestmark = pytest.mark.usefixtures("one_thread")


class PointFlow(nn.Module):
    """The exact velocity field of the flow from Gaussian noise to the single image ``c``: v(x, t) = (c - x) / (1 - t).
    Its trajectories are the straight lines from each noise to c; it ignores the conditions."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **cond) -> torch.Tensor:
        t = (timesteps / TIME_SCALE).view(-1, *([1] * (x.dim() - 1)))
        return (self.c - x) / (1 - t)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **cond) -> torch.Tensor:
        return torch.zeros_like(x)


def _on_path(b: int = 6):
    torch.manual_seed(0)
    c, x0 = torch.randn(1, 1, 4, 4), torch.randn(b, 1, 4, 4)
    t = torch.linspace(0.0, 0.85, b)
    tb = t.view(-1, 1, 1, 1)
    return c, x0, t, (1 - tb) * x0 + tb * c


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_target_of_an_exact_teacher_is_the_straight_line_velocity(solver):
    c, x0, t, x_t = _on_path()
    exact = PointFlow(c)
    for step in (0.1, 0.5, 1.0):  # t' < 1 (the target network's prediction) and t' = 1 (the teacher's step alone)
        v = velocity_target(exact, exact, x_t, t, step, {}, solver)
        assert torch.allclose(v, (c - x0).expand_as(v), atol=1e-5)

    # with a target network that predicts no motion, f_target(x_t', t') = x_t': v* = (t' - t) / (1 - t) (c - x0)
    v = velocity_target(exact, Zero(), x_t, t, 0.1, {}, solver)
    weight = ((torch.clamp(t + 0.1, max=1.0) - t) / (1 - t)).view(-1, 1, 1, 1)
    assert torch.allclose(v, weight * (c - x0), atol=1e-5)
    assert not torch.allclose(v, (c - x0).expand_as(v), atol=1e-2)


def test_prepare_batch_gives_the_student_its_path_point_and_target():
    torch.manual_seed(0)
    c = torch.randn(1, 1, 4, 4)
    batch = {"image": c.repeat(5, 1, 1, 1), "class": torch.tensor([0, 1, 2, 0, 1])}
    exact = PointFlow(c)
    prepare = ConsistencyPrepareBatch(FlowPath(), exact, exact, 0.2, False, 3, condition_dropout=0.0)
    x_t, v, args, kwargs = prepare(batch)
    assert args == () and set(kwargs) == {"timesteps", "cls"} and torch.equal(kwargs["cls"], batch["class"])
    t = (kwargs["timesteps"] / TIME_SCALE).view(-1, 1, 1, 1)
    x0 = (x_t - t * c) / (1 - t)  # the noise the path drew
    assert torch.allclose(v, c - x0, atol=1e-4)
    with pytest.raises(ValueError, match="fixed-step"):
        ConsistencyPrepareBatch(FlowPath(), exact, exact, 0.2, False, 3, solver="dopri5")
    with pytest.raises(ValueError, match="distill_target"):
        target_network("teacher", exact, None)


def _distill(data_dir, small_datalist, teacher, out, epochs=1, **extra):
    settings = {"teacher_ckpt": str(teacher), "distill_step": 0.25, **extra}
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs, configs=("distill.json",), **settings)


def _kind(model_file: dict) -> dict:
    return {k: v for k, v in model_file["card"].items() if k != "provenance"}


def test_distilled_model_starts_from_the_teacher_and_samples_in_one_step(
    data_dir, small_datalist, tiny_model, tmp_path
):
    teacher = read_checkpoint(str(tiny_model))
    still = tmp_path / "lr0"
    _distill(data_dir, small_datalist, tiny_model, still, lr=0.0)  # lr 0: the weights stay the teacher's
    kept = read_checkpoint(str(still / "model.pt"))
    assert _kind(kept) == _kind(teacher)  # an ordinary flow model file of the teacher's kind
    for weights in ("model", "ema"):
        assert all(torch.equal(kept[weights][k], teacher["ema"][k]) for k in teacher["ema"])
    settings = kept["card"]["provenance"]["settings"]["distillation"]
    assert settings == {
        "teacher_ckpt": str(tiny_model),
        "teacher_solver": "midpoint",
        "distill_step": 0.25,
        "distill_target": "student",
    }

    out = tmp_path / "distilled"
    _distill(data_dir, small_datalist, tiny_model, out, epochs=2, distill_target="ema")
    trained = read_checkpoint(str(out / "model.pt"))
    assert _kind(trained) == _kind(teacher)
    assert not all(torch.equal(trained["ema"][k], teacher["ema"][k]) for k in teacher["ema"])
    assert read_checkpoint(str(out / "checkpoint.pt"))["trainer"]["iteration"] == 4
    samples = sample("mask_class_2d", data_dir, str(small_datalist), out / "model.pt", tmp_path / "s", num_steps=1)
    info = json.loads((samples / "info.json").read_text())
    assert info["nfe"] == 1 and len(list((samples / "images").glob("*.nii.gz"))) == 4


def test_a_teacher_that_does_not_fit_is_refused_before_training(
    data_dir, small_datalist, tiny_model, tiny_ddpm, tmp_path
):
    for out, teacher, extra, problem in (
        (tmp_path / "ddpm", tiny_ddpm, {}, "method 'ddpm'"),
        (tmp_path / "other", tiny_model, {"unet#channels": [8, 8]}, "network channels"),
    ):
        with pytest.raises(USER_ERRORS) as excinfo:
            _distill(data_dir, small_datalist, teacher, out, **extra)
        assert str(teacher) in error_text(excinfo) and problem in error_text(excinfo)
        assert not (out / "checkpoint.pt").exists()
