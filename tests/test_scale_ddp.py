"""Two processes under torchrun (gloo, CPU) run the bundle's multi_gpu_train.json and multi_gpu_inference.json:
gradients are synchronised, the loss is the one-process loss of the same global batch, every variant trains, and
sharded generation writes the one-process cases, each once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scale_worker import run_job

from conftest import VARIANTS, datalist_for, run_bundle, tiny

WORKER = Path(__file__).with_name("scale_worker.py")
MULTI = ["multi_gpu_train.json"]
# the equivalence run: 16 fixed items, 2 epochs of 2 steps with a global batch of 8
EQUIVALENCE = {"variant": "mask_class_2d", "fixed_batch": 16, "global_batch": 8, "epochs": 2}
RUNS = [(v, "flow") for v in VARIANTS] + [("mask_class_2d", "ddpm")]


def _overrides(variant: str, data_dir: Path, small_datalist: Path, out: Path, epochs: int, batch_size: int) -> dict:
    return {
        **tiny(variant),
        "dataset_dir": str(data_dir),
        "datalist": datalist_for(variant, data_dir, small_datalist),
        "output_dir": str(out),
        "lr": 1e-3,
        "batch_size": batch_size,
        "train#trainer#max_epochs": epochs,
        "preview_interval": epochs,
        "checkpoint_interval": 1,
    }


def _equivalence_job(root: Path, data_dir: Path, small_datalist: Path, processes: int) -> dict:
    name = f"equivalence_{processes}"
    overrides = _overrides(
        EQUIVALENCE["variant"],
        data_dir,
        small_datalist,
        root / name,
        EQUIVALENCE["epochs"],
        EQUIVALENCE["global_batch"] // processes,
    )
    configs = ["train.json", f"variants/{EQUIVALENCE['variant']}.json"] + (MULTI if processes > 1 else [])
    return {
        "configs": configs,
        "overrides": overrides,
        "fixed_batch": EQUIVALENCE["fixed_batch"],
        "result": str(root / name),
    }


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory, data_dir, small_datalist) -> Path:
    """One torchrun launch of 2 processes: the equivalence run, every variant (and DDPM) for 2 steps, then sharded
    generation of the test split with the equivalence run's model."""
    root = tmp_path_factory.mktemp("ddp")
    jobs = [_equivalence_job(root, data_dir, small_datalist, 2)]
    for variant, method in RUNS:
        out = root / f"{variant}_{method}"
        epochs = 2 if variant.endswith("3d") else 1  # 2 steps per rank either way (1 volume, or 4 slices per rank)
        configs = ["train.json", f"variants/{variant}.json"] + (["train_ddpm.json"] if method == "ddpm" else []) + MULTI
        overrides = _overrides(variant, data_dir, small_datalist, out, epochs, batch_size=2)
        jobs.append({"configs": configs, "overrides": overrides, "result": str(out)})
    jobs.append(
        {
            "configs": ["inference.json", "variants/mask_class_2d.json", "multi_gpu_inference.json"],
            "overrides": _generation(root, data_dir, small_datalist, "sharded"),
        }
    )
    (root / "jobs.json").write_text(json.dumps(jobs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    done = subprocess.run([*command, str(root / "jobs.json")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return root


def _generation(root: Path, data_dir: Path, small_datalist: Path, name: str) -> dict:
    return {
        **tiny("mask_class_2d"),
        "dataset_dir": str(data_dir),
        "datalist": str(small_datalist),
        "ckpt_path": str(root / "equivalence_2" / "model.pt"),
        "output_dir": str(root / name),
        "num_steps": 2,
        "batch_size": 2,
    }


def _results(folder: Path, processes: int = 2) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def test_gradients_are_synchronised_and_the_loss_is_the_one_process_loss(torchrun, data_dir, small_datalist):
    ranks = _results(torchrun / "equivalence_2")
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])

    run_job(_equivalence_job(torchrun, data_dir, small_datalist, 1))
    (single,) = _results(torchrun / "equivalence_1", processes=1)
    steps = EQUIVALENCE["epochs"] * EQUIVALENCE["fixed_batch"] // EQUIVALENCE["global_batch"]
    assert len(single["losses"]) == len(ranks[0]["losses"]) == steps
    assert single["losses"][2] != single["losses"][0]  # the same batch a step later: the weights have moved
    ddp_loss = (np.array(ranks[0]["losses"]) + np.array(ranks[1]["losses"])) / 2  # each rank's mean over half
    np.testing.assert_allclose(ddp_loss, single["losses"], rtol=1e-5)
    for key, value in single["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant,method", RUNS)
def test_every_variant_trains_under_ddp(torchrun, variant, method):
    out = torchrun / f"{variant}_{method}"
    ranks = _results(out)
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    assert len(ranks[0]["losses"]) == 2 and np.isfinite(ranks[0]["losses"] + ranks[1]["losses"]).all()
    # rank 0 alone wrote the model, the checkpoint, the previews and TensorBoard
    model = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(model["model"][k], ranks[0]["weights"][k]) for k in model["model"])
    assert model["card"]["method"] == method and model["card"]["variant"] == variant
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert len(list((out / "previews").glob("*.png"))) == 1


def test_sharded_generation_gives_the_one_process_cases_each_once(torchrun, data_dir, small_datalist):
    sharded = torchrun / "sharded"
    single = torchrun / "single"
    run_bundle(
        ["inference.json", "variants/mask_class_2d.json"], **_generation(torchrun, data_dir, small_datalist, "single")
    )
    info = json.loads((sharded / "info.json").read_text())
    cases = json.loads(small_datalist.read_text())["test"]
    assert info["world_size"] == 2 and info["num_cases"] == info["generated"] == len(cases)  # none twice
    assert json.loads((sharded / "datalist.json").read_text()) == json.loads((single / "datalist.json").read_text())
    files = sorted(p.name for p in (sharded / "images").iterdir())
    assert files == sorted(p.name for p in (single / "images").iterdir()) and len(files) == len(cases)
    for name in files:
        a, b = (nib.load(folder / "images" / name) for folder in (sharded, single))
        assert np.allclose(a.get_fdata(), b.get_fdata(), atol=1e-3) and np.allclose(a.affine, b.affine)
    assert (sharded / "samples.png").stat().st_size > 1000
    assert not list(sharded.rglob(".*"))  # no temporary file left
