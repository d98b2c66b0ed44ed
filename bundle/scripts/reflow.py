"""Reflow (Liu et al., rectified flow, ICLR 2023): retrain a flow model on noise/image pairs of a trained one.

A trained flow model (the teacher) couples each noise z with the image x = ODE(z) that its sampler integrates z
to. A model trained on those pairs (x0 = z, x1 = x, the same conditions) learns paths that hardly cross, so its
velocity hardly changes along a path and one or two Euler steps land near where the teacher's many steps do.
``teacher_pairs`` makes the pair set once and caches it; ``RandPaird`` gives the trainer one of each case's
pairs per epoch. The result is an ordinary flow model file: inference and the deploy app load it unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import MapTransform, Randomizable
from torch import nn
from tqdm import tqdm

from .batches import without_meta
from .checkpoint import ModelCard, load_model
from .distributed import all_gather, rank
from .files import atomic_path
from .sampler import FlowSampler, case_noise

logger = logging.getLogger(__name__)

PAIR_KEYS = ("noise", "image")


def teacher_pairs(
    path: str,
    teacher_ckpt: str,
    network: nn.Module,
    card: ModelCard,
    sampler: FlowSampler,
    cases: Sequence[dict],
    transforms,
    pairs_per_case: int,
    seed: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Reflow's training set: for each case, ``pairs_per_case`` noises z and the teacher's images x = ODE(z).

    Pair k of case i has the noise ``case_noise([i * pairs_per_case + k], ...)`` and the image that ``sampler``
    integrates it to with the teacher's weights (loaded from ``teacher_ckpt`` into ``network`` after checking them
    against ``card``), under the case's mask and class. The set is made once (by rank 0 under torchrun) and cached
    in ``path`` (npz, read with ``allow_pickle=False``); a resumed run reads it, and a cache made with other
    settings is refused.

    Args:
        cases: the training cases (``load_cases``), each with its ``index``.
        transforms: the model's input transforms without augmentation (the pairs must stay paired).
    Returns:
        one item per case: ``noise`` and ``image`` (pairs_per_case, C, *image_size) in the model's units, the
        conditions the network takes (``label`` (1, *image_size), ``class``) and ``index``.
    """
    settings = {
        "teacher": os.path.abspath(teacher_ckpt),
        "solver": sampler.solver,
        "num_steps": sampler.num_steps,
        "guidance_scale": sampler.guidance_scale,
        "pairs_per_case": pairs_per_case,
        "seed": seed,
        "cases": [case["id"] for case in cases],
    }
    if rank() == 0 and not os.path.isfile(path):
        load_model(teacher_ckpt, network, card)
        arrays = _make_pairs(network, sampler, cases, transforms, pairs_per_case, seed, batch_size, device)
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays, settings=np.array(json.dumps(settings)))
        logger.info(f"wrote {len(cases)} x {pairs_per_case} reflow pairs to {path}")
    all_gather(None)  # every rank reads the set rank 0 wrote
    with np.load(path, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    made_with = json.loads(str(arrays.pop("settings")))
    if made_with != settings:
        other = {k: (made_with.get(k), v) for k, v in settings.items() if made_with.get(k) != v}
        raise ValueError(
            f"{path} holds reflow pairs made with other settings (there, here): {other}; "
            "choose another output_dir or remove the file"
        )
    return [
        {**{key: torch.as_tensor(value[i]) for key, value in arrays.items()}, "index": case["index"]}
        for i, case in enumerate(cases)
    ]


@torch.no_grad()
def _make_pairs(
    network: nn.Module,
    sampler: FlowSampler,
    cases: Sequence[dict],
    transforms,
    pairs_per_case: int,
    seed: int,
    batch_size: int,
    device: str | torch.device,
) -> dict[str, np.ndarray]:
    """Generates the pairs: arrays ``noise``, ``image`` (N, P, C, *spatial) and, as the network takes them,
    ``label`` (N, 1, *spatial) and ``class`` (N,), for N cases and P pairs per case."""
    network.to(device).eval()
    per_pair = [{**case, "index": case["index"] * pairs_per_case + k} for case in cases for k in range(pairs_per_case)]
    loader = DataLoader(Dataset(per_pair, transforms), batch_size=batch_size, num_workers=0)
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in (*PAIR_KEYS, "label", "class")}
    for batch in tqdm(loader, desc="reflow pairs", unit="batch", disable=rank() > 0):
        shape = batch["image"].shape[1:]
        images, _ = sampler.generate(network, batch, shape, seed, device)
        parts["image"].append(images.cpu())
        parts["noise"].append(case_noise([int(i) for i in batch["index"]], shape, seed))
        if network.num_labels:
            parts["label"].append(without_meta(batch["label"]))
        if network.num_classes:
            parts["class"].append(without_meta(batch["class"]).view(-1))
    arrays = {key: torch.cat(values).numpy() for key, values in parts.items() if values}
    grouped = {key: value.reshape(len(cases), pairs_per_case, *value.shape[1:]) for key, value in arrays.items()}
    conditions = {key: grouped[key][:, 0] for key in ("label", "class") if key in grouped}  # one per case
    return {**{key: grouped[key] for key in PAIR_KEYS}, **conditions}


class RandPaird(Randomizable, MapTransform):
    """Picks one of a case's pairs at random: each of ``keys`` (P, C, *spatial) -> (C, *spatial), the same pair in
    every key. Seeded like any MONAI random transform (``set_random_state``; the trainer's ``EpochSeeder``)."""

    def __init__(self, keys: Sequence[Hashable] = PAIR_KEYS) -> None:
        MapTransform.__init__(self, keys)
        self.pick = 0

    def randomize(self, count: int) -> None:
        self.pick = int(self.R.randint(count))

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(len(d[self.keys[0]]))
        for key in self.key_iterator(d):
            d[key] = d[key][self.pick]
        return d
