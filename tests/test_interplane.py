"""Inter-plane consistency: the metric on analytic volumes, stacks of 2D cases, noise shared by a subject's planes,
and the benchmark's small mode on a tiny model."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from conftest import published_table, tiny
from scripts.evaluation import Evaluation, slice_stacks
from scripts.metrics import interplane_ratio
from scripts.sampler import FlowSampler, noise_index

pytestmark = pytest.mark.usefixtures("one_thread")


def _grid(n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 3, indexing="ij")


def test_interplane_ratio_on_analytic_volumes():
    x, y, z = _grid()
    constant_along_stack = torch.sin(x / 4) * torch.cos(y / 5)
    assert interplane_ratio(constant_along_stack, axis=-1) == 0
    assert interplane_ratio(constant_along_stack, axis=0) > 1  # the same volume stacked along x varies in y only
    isotropic = torch.sin(x / 3) + torch.sin(y / 3) + torch.sin(z / 3)
    assert interplane_ratio(isotropic) == pytest.approx(1, abs=1e-9)
    amplitude = torch.rand(24, generator=torch.Generator().manual_seed(0)) + 0.5  # each plane scaled on its own
    independent = constant_along_stack * amplitude
    assert interplane_ratio(independent) > 5
    assert math.isnan(interplane_ratio(torch.zeros(4, 4, 4)))
    with pytest.raises(ValueError, match="three or more planes"):
        interplane_ratio(torch.zeros(8, 8, 2))


def _slice(folder, name: str, z: float, shape=(6, 5)) -> str:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[2, 3] = z
    path = str(folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), path)
    return path


def test_stacks_follow_the_slice_position_not_the_file_order(tmp_path):
    offsets = {"a": [6, 0, 9, 3], "b": [0, 3], "c": [0, 3, 9], "d": [0, 3, 6]}  # b: too few; c: irregular
    cases = [
        {"label": _slice(tmp_path, f"{s}_{k}", z, (6, 5) if (s, k) != ("d", 2) else (6, 6)), "subject": s}
        for s, zs in offsets.items()
        for k, z in enumerate(zs)
    ]  # d: one slice of another grid
    stacks, why = slice_stacks(cases)
    assert why is None and stacks == [[1, 3, 0, 2]]  # a's cases at z 0, 3, 6, 9
    stacks, why = slice_stacks(cases[4:])
    assert stacks == [] and "b: 2 slices" in why and "c: an irregular slice step" in why
    assert "different grids" in slice_stacks(cases[9:])[1]
    assert "no 'subject'" in slice_stacks([{"label": cases[0]["label"]}])[1]


def test_3d_outputs_are_measured_along_their_last_axis():
    x, y, z = _grid(12)
    smooth = torch.sin(x / 3) + torch.sin(y / 3) + torch.sin(z / 3)
    real = torch.stack([smooth, 2 * smooth])[:, None]  # (N, 1, *spatial), ratio 1 each
    generated = real * (torch.rand(12, generator=torch.Generator().manual_seed(0)) + 0.5)  # planes along the last axis
    values = {"skipped": {}, "ci95": {}}
    Evaluation("unused", [], None, [12, 12, 12], 0, [0, 1])._interplane(values, real, generated, conditioned=False)
    assert values["interplane_ratio_real"] == pytest.approx(1) and values["interplane_ratio"] > 3
    assert values["interplane_volumes"] == 2 and values["skipped"] == {}
    values = {"skipped": {}, "ci95": {}}
    Evaluation("unused", [], None, [12, 12], 0, [0, 1])._interplane(values, real[:, :, 0], real[:, :, 0], False)
    assert values["interplane_ratio"] is None and "unconditional" in values["skipped"]["interplane_ratio"]


class _Zero(nn.Module):
    """A network of no condition whose velocity is 0: the sampler returns its starting noise."""

    num_labels = num_classes = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _noise(cases: list[dict], noise: str, seed: int = 3) -> torch.Tensor:
    batch = {"index": torch.tensor([c["index"] for c in cases])}
    batch["noise_index"] = torch.tensor([noise_index(c, noise) for c in cases])
    return FlowSampler(num_steps=1).generate(_Zero(), batch, (1, 4, 4), seed)[0]


def test_shared_noise_is_one_per_subject_whatever_the_batch():
    a0, a1, b0 = {"index": 0, "subject": "sub-a"}, {"index": 1, "subject": "sub-a"}, {"index": 2, "subject": "sub-b"}
    shared = _noise([a0, b0, a1], "per_subject")
    assert torch.equal(shared[0], shared[2]) and not torch.equal(shared[0], shared[1])
    assert torch.equal(_noise([a1], "per_subject")[0], shared[0])  # alone in its batch: the same noise
    assert not torch.equal(_noise([a1], "per_subject", seed=4)[0], shared[0])  # another seed: another noise
    own = _noise([a0, b0, a1], "per_case")
    assert not torch.equal(own[0], own[2]) and torch.equal(_noise([a1], "per_case")[0], own[2])
    with pytest.raises(ValueError, match="names no 'subject'"):
        noise_index({"index": 0}, "per_subject")
    with pytest.raises(ValueError, match="noise must be one of"):
        noise_index(a0, "per_series")


def test_interplane_benchmark(data_dir, tiny_model, tmp_path):
    from interplane import main

    test_split = json.loads((data_dir / "datalist_2d.json").read_text())["test"]
    record = main(
        ckpt_path=str(tiny_model),
        datalist=str(data_dir / "datalist_2d.json"),
        case_stride=4,
        num_steps=2,
        out_dir=str(tmp_path),
        work_dir=str(tmp_path / "runs"),
        **{**tiny("mask_class_2d"), "dataset_dir": str(data_dir), "segmenter_path": "", "diversity_cases": 2},
    )
    rows = {r["noise"]: r["metrics"] for r in record["rows"]}
    assert set(rows) == {"per_case", "per_subject"}
    subjects = {c["subject"] for c in test_split}
    for noise, m in rows.items():
        assert m["noise"] == noise and m["num_generated"] == len(test_split[::4])
        assert m["interplane_volumes"] == len(subjects) and "interplane_ratio" not in m["skipped"]
        assert m["interplane_ratio"] > 0 and m["interplane_ratio_real"] == rows["per_case"]["interplane_ratio_real"]
        assert m["interplane_ratio_real"] > 0 and len(m["ci95"]["interplane_ratio"]) == 2
    assert rows["per_case"]["interplane_ratio"] != rows["per_subject"]["interplane_ratio"]  # the option reaches it
    assert published_table(tmp_path, "interplane").count("\n| ") == 2  # a row per noise option, under the header
