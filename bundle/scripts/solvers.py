"""ODE solvers for dx/dt = v(x, t) that count network function evaluations (NFE).

The fixed-step solvers are explicit Runge-Kutta methods given by their Butcher tableaus, so each one is a
table, not a new loop. ``dopri5`` is torchdiffeq's adaptive Dormand-Prince solver (MIT licence).
One step of any solver moves x: one Euler step from noise lands on x0 + v(x0, 0), the model's image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]

# name -> (a: stage coefficients, b: weights, c: stage times), the classical Butcher tableaus
TABLEAUS: dict[str, tuple[list[list[float]], list[float], list[float]]] = {
    "euler": ([], [1.0], [0.0]),
    "midpoint": ([[0.5]], [0.0, 1.0], [0.0, 0.5]),
    "heun": ([[1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}
ADAPTIVE = ("dopri5",)
SOLVERS = (*TABLEAUS, *ADAPTIVE)


def evaluations_per_step(solver: str) -> int:
    """NFE of one step of a fixed-step solver."""
    return len(TABLEAUS[solver][1])


def _rk_step(v: Velocity, x: torch.Tensor, t: float, h: float, solver: str) -> torch.Tensor:
    a, b, c = TABLEAUS[solver]
    k: list[torch.Tensor] = []
    for i in range(len(b)):
        xi = x
        for aij, kj in zip(a[i - 1] if i else [], k):
            if aij:
                xi = xi + (h * aij) * kj
        k.append(v(xi, t + c[i] * h))
    for bi, ki in zip(b, k):
        if bi:
            x = x + (h * bi) * ki
    return x


def integrate(
    velocity: Velocity,
    x: torch.Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    solver: str = "euler",
    num_steps: int = 10,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    progress: Callable | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrates dx/dt = velocity(x, t) from t0 to t1.

    Args:
        velocity: v(x, t) with x like ``x`` and t a float.
        x: the state at t0, any shape.
        solver: one of SOLVERS.
        num_steps: equal steps of a fixed-step solver (ignored by dopri5).
        rtol, atol: tolerances of dopri5.
        progress: optional wrapper for the step iterator (e.g. tqdm).
    Returns:
        (x at t1, NFE).
    """
    nfe = 0

    def counted(x_: torch.Tensor, t_: float) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        return velocity(x_, t_)

    if solver in ADAPTIVE:
        from torchdiffeq import odeint

        times = torch.tensor([t0, t1], dtype=torch.float64)
        out = odeint(lambda t_, x_: counted(x_, float(t_)), x, times, method=solver, rtol=rtol, atol=atol)
        return out[-1], nfe
    if solver not in TABLEAUS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    h = (t1 - t0) / num_steps
    steps = range(num_steps)
    for i in progress(steps) if progress else steps:
        x = _rk_step(counted, x, t0 + i * h, h, solver)
    return x, nfe
