"""Minibatch optimal-transport coupling of noise and images (the "OT" of OT flow matching, as in torchcfm), within
one condition at a time."""

from __future__ import annotations

import torch

COUPLINGS = (None, "exact", "sinkhorn")


def ot_pairing(
    x0: torch.Tensor,
    x1: torch.Tensor,
    method: str = "exact",
    reg: float = 0.05,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reorders noise x0 (B, ...) to pair with images x1 (B, ...) by a minibatch optimal-transport plan on squared
    Euclidean costs (POT, as torchcfm's OT plan sampler): "exact" solves the assignment (the plan is a
    permutation); "sinkhorn" draws each image's noise from the entropic plan's column (``reg`` relative to the
    largest cost). The pairs then cross less, so the learned paths are straighter.

    ``groups`` (B,): the cases' conditions (e.g. class indices). Noise is then paired only among the cases of one
    group: a conditional model learns one flow per condition, and pairing a condition's images with noise chosen
    for another's would bias the noise it starts from (None: one group)."""
    if method not in COUPLINGS[1:]:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {method!r}")
    if groups is None:
        return _pair(x0, x1, method, reg)
    paired = x0.clone()
    for group in groups.unique():
        members = torch.nonzero(groups == group).view(-1)
        paired[members] = _pair(x0[members], x1[members], method, reg)
    return paired


def _pair(x0: torch.Tensor, x1: torch.Tensor, method: str, reg: float) -> torch.Tensor:
    """``ot_pairing`` of one group."""
    import ot

    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2).cpu().numpy()
    weights = torch.full((x0.shape[0],), 1.0 / x0.shape[0], dtype=torch.float64).numpy()
    if method == "exact":
        plan = torch.from_numpy(ot.emd(weights, weights, cost))
        return x0[plan.argmax(0).to(x0.device)]
    plan = torch.from_numpy(ot.sinkhorn(weights, weights, cost / cost.max(), reg))
    return x0[torch.multinomial(plan.T.clamp(min=0) + 1e-30, 1).view(-1).to(x0.device)]
