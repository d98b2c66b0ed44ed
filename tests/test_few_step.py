"""Few-step models: the coupling key of train.json, given noise in the flow path, reflow from a teacher checkpoint
(pairs, initialisation, resume, inference) and the few-step benchmark, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import CONFIGS, USER_ERRORS, error_text, published_table, sample, tiny, train
from scripts.batches import GenerativePrepareBatch, conditions
from scripts.checkpoint import read_checkpoint
from scripts.data import input_transforms, load_batch, load_cases
from scripts.flow import FlowPath
from scripts.networks import ConditionalUNet
from scripts.sampler import FlowSampler, case_noise


def test_given_noise_is_used_as_is():
    torch.manual_seed(0)
    x1, x0 = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    x_t, timesteps, target = FlowPath()(x1, x0)
    assert torch.equal(target, x1 - x0)
    t = (timesteps / 1000).view(-1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - t) * x0 + t * x1, atol=1e-6)
    batch = {"image": x1, "noise": x0, "class": torch.zeros(8, dtype=torch.long)}
    prepare = GenerativePrepareBatch(FlowPath(), False, 3, condition_dropout=0.0, coupling="exact")
    _, target, _, kwargs = prepare(batch)  # given pairs are never re-coupled
    assert torch.equal(target, x1 - x0) and set(kwargs) == {"timesteps", "cls"}
    _, drawn, _, _ = GenerativePrepareBatch(FlowPath(), False, 0)({"image": x1})
    assert not torch.equal(drawn, x1 - x0)


@pytest.mark.parametrize("coupling", [None, "exact", "sinkhorn"])
def test_coupling_is_a_train_config_key(coupling):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    assert parser["coupling"] is None  # the default: independent noise, as the shipped model was trained
    parser["coupling"], parser["num_labels"] = coupling, 0  # a class-conditioned model: coupled within each class
    assert parser.get_parsed_content("train#prepare_batch").coupling == coupling
    if coupling:  # the shipped variant is mask-conditioned: every mask its own condition, nothing to pair
        parser["num_labels"] = 4
        with pytest.raises(Exception) as excinfo:
            parser.get_parsed_content("train#prepare_batch", lazy=False)
        assert "with mask conditioning" in error_text(excinfo)


def _reflow(data_dir, small_datalist, teacher, out, epochs, **extra):
    settings = {"teacher_ckpt": str(teacher), "pairs_per_case": 2, "pair_solver": "midpoint", "pair_steps": 2, **extra}
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs, configs=("reflow.json",), **settings)


def _kind(model_file: dict) -> dict:
    """What a model file's card says the weights are, without how they were made."""
    return {k: v for k, v in model_file["card"].items() if k != "provenance"}


def test_reflow_starts_from_the_teacher_on_its_pairs(data_dir, small_datalist, tiny_model, tmp_path):
    out = tmp_path / "reflow"
    _reflow(data_dir, small_datalist, tiny_model, out, epochs=1, lr=0.0)  # lr 0: the weights stay the start's
    teacher = read_checkpoint(str(tiny_model))
    student = read_checkpoint(str(out / "model.pt"))
    assert _kind(student) == _kind(teacher)  # an ordinary flow model file of the teacher's kind
    assert student["card"]["provenance"]["init_ckpt"] == str(tiny_model)
    for weights in ("model", "ema"):
        assert all(torch.equal(student[weights][k], teacher["ema"][k]) for k in teacher["ema"])

    # each pair: the case's own noise and the teacher's image of it under the case's conditions
    with np.load(out / "pairs.npz", allow_pickle=False) as saved:
        pairs = {key: torch.from_numpy(saved[key]) for key in ("noise", "image", "label", "class")}
    cases = load_cases(str(small_datalist), "training", str(data_dir), True, 3)
    assert pairs["noise"].shape == pairs["image"].shape == (len(cases), 2, 1, 16, 16)
    assert pairs["label"].shape == (len(cases), 1, 16, 16) and pairs["class"].tolist() == [c["class"] for c in cases]
    network = ConditionalUNet(**teacher["card"]["network"]).eval()
    network.load_state_dict(teacher["ema"])
    batch = load_batch(cases[:1], input_transforms([16, 16], 4, teacher["card"]["intensity_range"]))
    cond = conditions(batch, True, 3)
    for k in range(2):
        noise = case_noise([cases[0]["index"] * 2 + k], (1, 16, 16), seed=1)  # reflow.json's pair_seed: seed + 1
        image, nfe = FlowSampler("midpoint", 2)(network, noise, cond)
        assert nfe == 4 and torch.equal(pairs["noise"][0, k], noise[0])
        assert torch.allclose(pairs["image"][0, k], image[0], atol=1e-5)
    assert torch.equal(pairs["label"][0], cond["mask"][0])
    assert not torch.allclose(pairs["image"], pairs["noise"], atol=0.05)  # the teacher moved the noise


def test_reflow_resumes_on_its_pairs_and_inference_loads_it(data_dir, small_datalist, tiny_model, tmp_path):
    out = tmp_path / "reflow"
    _reflow(data_dir, small_datalist, tiny_model, out, epochs=1)
    written = (out / "pairs.npz").stat().st_mtime_ns
    _reflow(data_dir, small_datalist, tiny_model, out, epochs=2)  # resumed: the cached pairs, not new ones
    assert (out / "pairs.npz").stat().st_mtime_ns == written
    assert read_checkpoint(str(out / "checkpoint.pt"))["trainer"]["iteration"] == 4
    teacher, trained = read_checkpoint(str(tiny_model))["ema"], read_checkpoint(str(out / "model.pt"))["ema"]
    assert not all(torch.equal(trained[k], teacher[k]) for k in trained)
    with pytest.raises(USER_ERRORS) as excinfo:
        _reflow(data_dir, small_datalist, tiny_model, out, epochs=3, pairs_per_case=3)
    assert "other settings" in error_text(excinfo) and "pairs_per_case" in error_text(excinfo)

    # inference (and so the deploy app, which runs inference.json) loads it unchanged
    samples = sample("mask_class_2d", data_dir, str(small_datalist), out / "model.pt", tmp_path / "s", num_steps=1)
    info = json.loads((samples / "info.json").read_text())
    assert info["nfe"] == 1 and len(list((samples / "images").glob("*.nii.gz"))) == 4


def test_fine_tune_refuses_another_intensity_range(data_dir, small_datalist, tiny_model, tmp_path):
    with pytest.raises(USER_ERRORS) as excinfo:
        train(
            "mask_class_2d",
            data_dir,
            str(small_datalist),
            tmp_path / "t",
            1,
            init_ckpt=str(tiny_model),
            intensity_range=[0.0, 1.0],
        )
    assert "was trained with intensity_range" in error_text(excinfo)


def test_few_step_benchmark(data_dir, small_datalist, tiny_model, tiny_ddpm, tmp_path, capsys):
    from few_step import main

    overrides = {
        **tiny("mask_class_2d"),
        "dataset_dir": str(data_dir),
        "datalist": str(small_datalist),
        "segmenter_path": "",
        "lr": 1e-3,
        "batch_size": 4,
        "pairs_per_case": 2,
        "pair_steps": 1,
        "distill_step": 0.5,
    }
    out, work = tmp_path / "out", tmp_path / "work"
    settings = {
        "base_ckpt": str(tiny_model),
        "ddpm_ckpt": str(tiny_ddpm),
        "out_dir": str(out),
        "work_dir": str(work),
        "finetune_epochs": 1,
        "nfe": (1, 2),
        "ddpm_steps": 3,
        "case_stride": 2,
        "overrides": overrides,
    }
    main(**settings, only="control")  # one fine-tune alone, as a process of its own would train it: no record
    control_written = (work / "control" / "model.pt").stat().st_mtime_ns
    assert not out.exists() and not (work / "reflow").exists()
    main(**settings)
    record = json.loads((out / "few_step.json").read_text())
    assert record["benchmark"] == "few_step" and record["case_stride"] == 2
    assert (work / "control" / "model.pt").stat().st_mtime_ns == control_written  # reused
    assert len(json.loads((work / "test_subset.json").read_text())["test"]) == 2  # every 2nd of the 4 test slices
    assert set(record["skipped"]) == {"ot"} and "mask" in record["skipped"]["ot"]  # the base is mask-conditioned
    rows = {(r["model"], r["solver"], r["nfe"]): r for r in record["rows"]}
    models = ("base", "control", "reflow", "consistency")
    flow = {(m, s, n) for m in models for s, n in (("euler", 1), ("euler", 2), ("midpoint", 2))}
    assert flow <= set(rows) and ("ddpm", "ddpm", 3) in rows and not any(m == "ot" for m, _, _ in rows)
    dopri5 = [key for key in rows if key[1] == "dopri5"]
    assert len(dopri5) == 1 and dopri5[0][2] > 2  # the NFE the adaptive solver used
    assert all(np.isfinite(r["psnr_paired"]) for r in record["rows"])
    base = read_checkpoint(str(tiny_model))
    for name in models[1:]:  # fine-tuned from the base: same card, new weights
        assert record["checkpoints"][name] == f"{name}/model.pt"  # named without the machine's folders
        tuned = read_checkpoint(str(work / name / "model.pt"))
        assert _kind(tuned) == _kind(base) and not torch.equal(
            tuned["ema"]["unet.out.2.conv.weight"], base["ema"]["unet.out.2.conv.weight"]
        )
        assert record["finetunes"][name]["epochs"] == 1
    assert (work / "reflow/pairs.npz").is_file()
    goals = record["goal"]
    assert not goals["reference_found"]  # no 10-NFE run here, and no segmenter: the goal is undecided, not failed
    assert {(g["model"], g["solver"], g["nfe"]) for g in goals["rows"]} == flow
    assert all(g["met"] is None for g in goals["rows"])
    table = published_table(out, "few_step")
    assert "| consistency | euler | 1 |" in table and "Skipped: ot:" in table
    assert (out / "few_step.png").stat().st_size > 1000

    # a rerun reuses the finished fine-tunes untouched and every measured setting
    written = {name: (work / name / "model.pt").stat().st_mtime_ns for name in models[1:]}
    capsys.readouterr()
    main(**settings)
    assert {name: (work / name / "model.pt").stat().st_mtime_ns for name in models[1:]} == written
    assert capsys.readouterr().out.count("reusing") == len(record["rows"])
    assert json.loads((out / "few_step.json").read_text())["rows"] == record["rows"]


def test_few_step_goal_and_arms(tmp_path):
    from few_step import arms, goal
    from tables import few_step_table

    def row(model, solver, nfe, fd, dice):
        return {"model": model, "solver": solver, "nfe": nfe, "fd_segmenter_features": fd, "mask_dice": dice}

    rows = [
        row("base", "euler", 10, 10.0, 0.80),
        row("base", "euler", 1, 40.0, 0.50),
        row("consistency", "euler", 1, 10.9, 0.73),  # within 10% on both
        row("consistency", "euler", 2, 11.2, 0.90),  # FD 12% worse
        row("reflow", "midpoint", 2, 9.0, 0.71),  # Dice 11% worse
        row("ddpm", "ddpm", 1000, 5.0, 0.9),
    ]
    result = goal(rows)
    entries = {(g["model"], g["solver"], g["nfe"]): g for g in result["rows"]}
    met = {key: entry["met"] for key, entry in entries.items()}  # the DDPM and 10-NFE rows are no candidates
    assert met == {
        ("base", "euler", 1): False,
        ("consistency", "euler", 1): True,
        ("consistency", "euler", 2): False,
        ("reflow", "midpoint", 2): False,
    }
    assert entries[("consistency", "euler", 1)]["fd_segmenter_features_ratio"] == pytest.approx(1.09)
    assert entries[("reflow", "midpoint", 2)]["fd_segmenter_features_within"] is True
    assert entries[("reflow", "midpoint", 2)]["mask_dice_within"] is False

    record = {
        "rows": rows,
        "goal": result,
        "finetunes": {"consistency": {"iterations": 10, "epochs": 1, "training_seconds": 2.0}},
        "finetune_epochs": 1,
        "skipped": {},
        "case_stride": 4,
        "machine": "m",
        "command": "python bench/few_step.py",
        "seconds": 1.0,
    }
    table = few_step_table(record)
    assert "| consistency | euler | 1 | 10.900 (1.09x) | 0.730 (0.91x) | yes |" in table
    assert "| consistency | euler | 2 | 11.200 (1.12x) | 0.900 (1.12x) | no |" in table

    # the ot arm runs only for a base without mask conditioning
    every = ["control", "ot", "reflow", "consistency"]
    for labels, expected in ((0, every), (4, [name for name in every if name != "ot"])):
        path = tmp_path / f"model{labels}.pt"
        torch.save({"card": {"network": {"num_labels": labels}}}, path)
        names, skipped = arms(str(path))
        assert names == expected and set(skipped) == ({"ot"} if labels else set())
        assert arms(str(path), ("reflow", "ot"))[0] == ([] if labels else ["ot"]) + ["reflow"]
    with pytest.raises(ValueError, match="unknown fine-tunes \\['reflow2'\\]"):
        arms(str(path), ["reflow2"])
