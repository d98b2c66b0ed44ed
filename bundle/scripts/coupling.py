"""Minibatch optimal-transport coupling of noise and images (the "OT" of OT flow matching, as in torchcfm)."""

from __future__ import annotations

import torch

COUPLINGS = (None, "exact", "sinkhorn")


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", reg: float = 0.05) -> torch.Tensor:
    """Reorders noise x0 (B, ...) to pair with images x1 (B, ...) by a minibatch optimal-transport plan on squared
    Euclidean costs (POT, as torchcfm's OT plan sampler): "exact" solves the assignment (the plan is a
    permutation); "sinkhorn" draws each image's noise from the entropic plan's column (``reg`` relative to the
    largest cost). The pairs then cross less, so the learned paths are straighter."""
    import ot

    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2).cpu().numpy()
    weights = torch.full((x0.shape[0],), 1.0 / x0.shape[0], dtype=torch.float64).numpy()
    if method == "exact":
        plan = torch.from_numpy(ot.emd(weights, weights, cost))
        return x0[plan.argmax(0).to(x0.device)]
    if method == "sinkhorn":
        plan = torch.from_numpy(ot.sinkhorn(weights, weights, cost / cost.max(), reg))
        return x0[torch.multinomial(plan.T.clamp(min=0) + 1e-30, 1).view(-1).to(x0.device)]
    raise ValueError(f"coupling must be one of {COUPLINGS}, got {method!r}")
