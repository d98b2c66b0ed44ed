"""Runs bundle workflows in one process, as ``monai.bundle run`` does; the multi-process tests start it under torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/scale_worker.py JOBS.json

JOBS.json is a list of jobs ``{"configs": [...], "overrides": {...}, "result": path, "fixed_batch": n}``, run in
order in one process group: only the last job's "finalize" (which destroys the group) runs, as initialising a gloo
group again on torchrun's store now and then hung. A training job with a "result" has every rank save
``result/rank<r>.pt``: the loss of every iteration and the final weights. With "fixed_batch", the training data are
n fixed (input, target, time, conditions) items drawn from one seed (see ``fixed_batch``), so runs with any number
of processes see the same global batches.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from ignite.engine import Events

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
sys.path.insert(0, str(CONFIGS.parent))


class LossRecorder:
    """A train handler that keeps the loss of every iteration."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.losses.append(float(e.state.output[0]["loss"]))
        )


def fixed_batch(n: int, image_size: list[int], num_labels: int, num_classes: int, distributed: bool) -> dict:
    """Overrides that train on n fixed items, drawn from one seed and dealt in order (no shuffling), fed to the network
    by MONAI's ``PrepareBatchExtraInput``: with batch size B in one process or B / N in each of N processes (whose
    ``DistributedSampler`` deals items round-robin) every step sees the same global batch."""
    from monai.data import Dataset
    from monai.engines import PrepareBatchExtraInput

    g = torch.Generator().manual_seed(0)
    shape = (n, 1, *image_size)
    data = {"image": torch.randn(shape, generator=g), "label": torch.randn(shape, generator=g)}
    data["t"] = torch.rand(n, generator=g) * 1000
    extra = {"timesteps": "t"}
    if num_labels:
        data["mask"], extra["mask"] = torch.randint(0, num_labels, shape, generator=g), "mask"
    if num_classes:
        data["cls"], extra["cls"] = torch.randint(0, num_classes + 1, (n,), generator=g), "cls"
    overrides = {
        "train#dataset": Dataset([{k: v[i] for k, v in data.items()} for i in range(n)]),
        "train#prepare_batch": PrepareBatchExtraInput(extra_keys=extra),
        "train#dataloader#shuffle": False,
    }
    return {**overrides, "train#sampler#shuffle": False} if distributed else overrides


def run_job(job: dict, finalize: bool = True) -> None:
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / c) for c in job["configs"]]
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, logging_file=False, **job["overrides"])
    parser = workflow.parser
    if "fixed_batch" in job:
        size, labels, classes = parser["image_size"], parser["num_labels"], parser["num_classes"]
        parser.update(fixed_batch(job["fixed_batch"], size, labels, classes, distributed="train#sampler" in parser))
    recorder = LossRecorder()
    training = "train" in parser
    if training:
        parser["train#handlers"].append(recorder)
    workflow.initialize()
    workflow.run()
    if training and job.get("result"):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        network = parser.get_parsed_content("network")
        weights = getattr(network, "module", network).state_dict()
        os.makedirs(job["result"], exist_ok=True)
        torch.save({"losses": recorder.losses, "weights": weights}, os.path.join(job["result"], f"rank{rank}.pt"))
    if finalize:
        workflow.finalize()


if __name__ == "__main__":
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for i, job in enumerate(jobs):
        run_job(job, finalize=i == len(jobs) - 1)
