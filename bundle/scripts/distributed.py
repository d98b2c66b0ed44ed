"""torch.distributed in the few words the bundle needs; in a plain process they describe rank 0 of 1."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def all_gather(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order; a barrier too."""
    if not initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
