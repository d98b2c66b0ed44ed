"""Consistency distillation (Song et al., ICML 2023) of a flow model into one that samples in one step.

The student is a velocity network like its teacher, read through its consistency function
f(x_t, t) = x_t + (1 - t) v(x_t, t): the image that one Euler step from (x_t, t) lands on. f(x, 1) = x holds by
construction (the boundary condition), and one Euler step from noise at t = 0 is f(x0, 0), so the distilled model
is an ordinary flow model file that inference, evaluation and the deploy app run with ``--solver euler
--num_steps 1`` (more Euler steps stay valid: each moves along the straight line to a refined image prediction).

Training pairs adjacent times t and t' = min(t + step, 1) on one ODE trajectory of the teacher: x_t on the flow
path, x_t' one teacher solver step from it. The consistency loss ||f_student(x_t, t) - f_target(x_t', t')||^2
equals (1 - t)^2 ||v_student(x_t, t) - v*||^2 with the velocity target

    v* = (f_target(x_t', t') - x_t) / (1 - t) = ((t' - t) u + (1 - t') v_target(x_t', t')) / (1 - t),

u the teacher step's velocity (x_t' - x_t) / (t' - t): a convex combination of two velocities, bounded as t -> 1.
``ConsistencyPrepareBatch`` hands (x_t, v*) to MONAI's SupervisedTrainer, whose plain MSE then drops the (1 - t)^2
weight: the loss stays on flow matching's velocity scale (the same learning rate and validation curve), and on the
last ``step`` of the path (t' = 1, where v* is the teacher's own step velocity) the student stays tied to the
teacher, which anchors the chain of targets that the weight would leave almost without gradient there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .batches import GenerativePrepareBatch
from .checkpoint import ModelCard, load_model
from .flow import FlowPath, expand_like
from .solvers import TABLEAUS, integrate
from .training import EMA, unwrap

TARGETS = ("student", "ema")


def load_teacher(path: str, network: nn.Module, card: ModelCard, device: str | torch.device = "cpu") -> nn.Module:
    """The frozen teacher: ``network`` with the (EMA) weights of the model file ``path``, in eval mode on ``device``.

    The file's card is checked against ``card`` (the student's) before anything else runs: a DDPM model or a
    network of another configuration is refused with a ValueError naming ``path``."""
    load_model(path, network, card)
    return network.to(device).eval().requires_grad_(False)


def target_network(kind: str, student: nn.Module, ema: EMA) -> nn.Module:
    """The network of the targets: "student", the trained network itself under stop-gradient (target decay
    mu = 0, as in improved consistency training, Song & Dhariwal 2024), or "ema", its moving average (the original
    paper's target network; with the bundle's decay of 0.999 it follows the student slowly)."""
    if kind not in TARGETS:
        raise ValueError(f"distill_target must be one of {TARGETS}, got {kind!r}")
    return unwrap(student) if kind == "student" else ema.model


def velocity_target(
    teacher: nn.Module,
    target: nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    step: float,
    cond: Mapping[str, torch.Tensor],
    solver: str = "midpoint",
) -> torch.Tensor:
    """The consistency-distillation velocity target v* (see the module's docstring); no gradient flows.

    Args:
        teacher: the flow model whose ODE is distilled: ``teacher(x, timesteps, **cond)`` -> velocity like x.
        target: the network whose consistency function gives the target at t' (the student itself, or its EMA).
        x_t: points on the flow path (B, C, *spatial) at times ``t`` (B,) in [0, 1).
        step: the distance t' - t (t' capped at 1).
        cond: the conditions of both networks (``mask`` (B, 1, *spatial), ``cls`` (B,)), as the student gets them.
        solver: the fixed-step solver of the teacher's step (``solvers.TABLEAUS``).
    Returns:
        v* (B, C, *spatial).
    """
    with torch.no_grad():
        t_next = (t + step).clamp(max=1.0)
        start, end = expand_like(t, x_t), expand_like(t_next, x_t)

        def velocity(net: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            return lambda x, s: net(x, FlowPath.timesteps(s.reshape(-1)), **cond).to(x.dtype)

        x_next, _ = integrate(velocity(teacher), x_t, start, end, solver, num_steps=1)  # per-case times
        image = FlowPath.clean_estimate(x_next, end, velocity(target)(x_next, end))  # f_target(x_t', t')
        image = torch.where(end < 1.0, image, x_next)  # f(x, 1) = x, whatever the network gives at t = 1
        return (image - x_t) / (1.0 - start).clamp(min=1e-6)


class ConsistencyPrepareBatch(GenerativePrepareBatch):
    """``prepare_batch`` of consistency distillation: a batch -> (x_t, v*, (), kwargs) for MONAI's SupervisedTrainer.

    x_t, the timesteps and the conditions (with condition dropout) are those of ``GenerativePrepareBatch`` on the
    flow path; the flow-matching target is replaced by ``velocity_target`` from the frozen ``teacher`` and the
    ``target`` network, run under the same conditions.

    Args:
        path: a ``flow.FlowPath`` (its time schedule draws t).
        teacher: the frozen teacher (``load_teacher``).
        target: the target network: the student (stop-gradient) or its moving average.
        step: t' - t, the length of the teacher's step.
        solver: the teacher step's fixed-step solver.
        autocast_dtype: run teacher and target under ``torch.autocast`` with this dtype (the trainer's AMP, which
            covers only the student's forward pass); None: as they are.
        use_mask, num_classes, condition_dropout: as ``GenerativePrepareBatch``.
    """

    def __init__(
        self,
        path: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        teacher: nn.Module,
        target: nn.Module,
        step: float,
        use_mask: bool,
        num_classes: int,
        condition_dropout: float = 0.1,
        solver: str = "midpoint",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(path, use_mask, num_classes, condition_dropout)
        if solver not in TABLEAUS:
            raise ValueError(f"teacher solver must be a fixed-step one of {tuple(TABLEAUS)}, got {solver!r}")
        if not 0.0 < step <= 1.0:
            raise ValueError(f"the distillation step must be in (0, 1], got {step}")
        self.teacher, self.target, self.step, self.solver = teacher, target, float(step), solver
        self.autocast_dtype = autocast_dtype

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        x_t, _, args, inputs = super().__call__(batchdata, device, non_blocking, **kwargs)
        cond = {key: value for key, value in inputs.items() if key != "timesteps"}
        t = FlowPath.time(inputs["timesteps"])
        autocast = (
            torch.autocast(x_t.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            target = velocity_target(self.teacher, self.target, x_t, t, self.step, cond, self.solver)
        return x_t, target, args, inputs
