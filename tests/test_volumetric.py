"""The 3D path on tiny models: the 3D segmenter's config, evaluation of a mask_3d model with it, and the 3D
comparison benchmark (every row measured, the table written, a rerun reusing rows and seeds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, published_table, run_bundle, sample, tiny, train
from scripts.evaluation import Evaluation

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = {"image_size": [32, 32, 32]}  # the benchmark's patches (half the side) need 16 or more


@pytest.fixture(scope="module")
def datalist_3d(data_dir: Path) -> str:
    return str(data_dir / "datalist_3d.json")


@pytest.fixture(scope="module")
def flow_3d(tmp_path_factory, data_dir, datalist_3d) -> Path:
    """A tiny mask_3d flow model (16^3), a few iterations of the bundle's train config."""
    out = tmp_path_factory.mktemp("flow_3d")
    train("mask_3d", data_dir, datalist_3d, out, epochs=3, **SIZE)
    return out / "model.pt"


@pytest.fixture(scope="module")
def ddpm_3d(tmp_path_factory, data_dir, datalist_3d) -> Path:
    """Its DDPM baseline: the same network, data and iterations, with train_ddpm.json after the variant."""
    out = tmp_path_factory.mktemp("ddpm_3d")
    train("mask_3d", data_dir, datalist_3d, out, epochs=3, configs=("train_ddpm.json",), **SIZE)
    return out / "model.pt"


@pytest.fixture(scope="module")
def segmenter_3d(tmp_path_factory, data_dir) -> Path:
    """A tiny 3D segmenter trained by train_segmenter.json + train_segmenter_3d.json at 32^3."""
    path = tmp_path_factory.mktemp("segmenter_3d") / "segmenter_3d.pt"
    run_bundle(
        ["train_segmenter.json", "train_segmenter_3d.json"],
        dataset_dir=str(data_dir),
        iterations=2,
        ckpt_path=str(path),
        **SIZE,
    )
    return path


def _parsed(configs: list[str], key: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    return parser.get_parsed_content(key)


def test_segmenter_3d_config_and_default_path(segmenter_3d):
    card = torch.load(segmenter_3d, weights_only=True)["card"]
    assert card["method"] == "segmenter" and card["image_size"] == SIZE["image_size"]
    assert card["provenance"]["data"]["num_cases"] == 3  # the 3D training subjects of the test data
    # evaluation reads the segmenter of the model's dimension unless told otherwise
    assert _parsed(["inference.json", "variants/mask_3d.json", "evaluate.json"], "segmenter_path").endswith(
        "/models/segmenter_3d.pt"
    )
    assert _parsed(["inference.json", "evaluate.json"], "segmenter_path").endswith("/models/segmenter.pt")
    assert _parsed(["train_segmenter.json", "train_segmenter_3d.json"], "ckpt_path").endswith("/models/segmenter_3d.pt")


def test_missing_3d_segmenter_names_its_configs(tmp_path):
    evaluation = Evaluation(str(tmp_path), [], None, [16, 16, 16], 4, [0, 1], segmenter_path=str(tmp_path / "no.pt"))
    skipped: dict = {}
    assert evaluation._load_segmenter(skipped) is None
    assert "train_segmenter_3d.json" in skipped["segmenter"]


def test_mask_3d_evaluates_end_to_end(data_dir, datalist_3d, flow_3d, segmenter_3d, tmp_path):
    extra = {**SIZE, "segmenter_path": str(segmenter_3d), "diversity_cases": 2, "bootstrap_draws": 20}
    out = sample("mask_3d", data_dir, datalist_3d, flow_3d, tmp_path / "eval", configs=("evaluate.json",), **extra)
    values = json.loads((out / "metrics.json").read_text())
    assert values["num_generated"] == values["num_real"] == 2 and values["nfe"] == 2
    assert 0 <= values["mask_dice"] <= 1 and 0 <= values["mask_dice_real"] <= 1
    keys = ("fd_segmenter_features", "ms_ssim_diversity", "conditional_ms_ssim", "interplane_ratio")
    assert all(math.isfinite(values[k]) for k in (*keys, "interplane_ratio_real"))
    assert values["interplane_volumes"] == 2 and "segmenter" not in values["skipped"]


def test_volumetric_benchmark(data_dir, datalist_3d, flow_3d, ddpm_3d, segmenter_3d, tmp_path):
    from volumetric import main

    args = {
        "flow_ckpt": str(flow_3d),
        "ddpm_ckpt": str(ddpm_3d),
        "segmenter_path": str(segmenter_3d),
        "out_dir": str(tmp_path),
        "work_dir": str(tmp_path / "runs"),
        "nfe": (1, 2),
        "ddim_steps": (2,),
        "ddpm_steps": 3,
        "seeds": (0, 1),
        "overrides": {
            **tiny("mask_3d"),
            **SIZE,
            "dataset_dir": str(data_dir),
            "datalist": datalist_3d,
            "bootstrap_draws": 20,
        },
    }
    record = main(**args)
    rows = {(r["method"], r["solver"], r["nfe"]): r for r in record["rows"]}
    assert set(rows) == {("flow", "euler", 1), ("flow", "euler", 2), ("ddpm", "ddim", 2), ("ddpm", "ddpm", 3)}
    settings = record["settings"]
    assert settings["image_size"] == SIZE["image_size"] and settings["patches_per_volume"] == 27
    assert settings["test_volumes"] == 2 and settings["validation_volumes"] == 1
    assert record["fd_patches_real"] > 0 and record["models"]["ddpm"]["iterations"] > 0
    for row in rows.values():
        assert row["seeds"] == [0, 1] and row["seconds_per_volume"] > 0
        assert 0 <= row["mask_dice"] <= 1 and row["mask_dice_real"] == rows[("flow", "euler", 1)]["mask_dice_real"]
        assert 0 < row["conditional_ms_ssim"] <= 1 and math.isfinite(row["interplane_ratio"])
        lo, hi = row["seed_range"]["fd_patches"]
        assert 0 < lo <= row["fd_patches"] <= hi
    assert rows[("flow", "euler", 1)]["fd_patches"] != rows[("flow", "euler", 2)]["fd_patches"]  # NFE reaches it
    assert "mask_dice_real" not in rows[("flow", "euler", 1)]["seed_range"]  # one real set: no range
    table = published_table(tmp_path, "volumetric")
    assert table.count("\n| flow | euler |") == 2 and "| ddpm | ddpm | 3 |" in table and "(the floor)" in table
    assert "Flow at 10 NFE against DDPM ddpm 1000: not in this record" in table  # the goals name what is missing
    assert (tmp_path / "volumetric.png").stat().st_size > 1000

    # a rerun reads every row back; a row whose result is lost is rebuilt from its seeds' saved sets
    (tmp_path / "runs/flow-euler-1/result.json").unlink()
    assert main(**args)["rows"] == record["rows"]
