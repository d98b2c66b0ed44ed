"""Resumable generation (``resume: true``, the mode torchrun runs use): each case is written once and atomically,
a rerun after a crash generates only the missing cases, and an output_dir of other settings is refused."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from conftest import CONFIGS, USER_ERRORS, error_text, run_bundle, tiny
from scripts.checkpoint import save_model

CONFIG_FILES = ["inference.json", "variants/mask_class_2d.json"]


@pytest.fixture
def settings(data_dir, small_datalist, tmp_path) -> dict:
    """Inference overrides for a tiny untrained mask_class_2d model saved as a model file."""
    settings = {
        **tiny("mask_class_2d"),
        "dataset_dir": str(data_dir),
        "datalist": str(small_datalist),
        "ckpt_path": str(tmp_path / "model.pt"),
        "output_dir": str(tmp_path / "out"),
        "num_steps": 2,
        "batch_size": 2,
        "resume": True,
    }
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in CONFIG_FILES])
    parser.update(settings)
    card = parser.get_parsed_content("card")
    card.intensity_range = [0.0, 100.0]
    save_model(settings["ckpt_path"], parser.get_parsed_content("network_def"), None, card)
    return settings


def test_rerun_generates_only_missing_cases(settings, small_datalist, tmp_path):
    out = tmp_path / "out"
    run_bundle(CONFIG_FILES, **settings)
    images = sorted((out / "images").iterdir())
    assert len(images) == len(json.loads(small_datalist.read_text())["test"]) == 4
    first = {p.name: (p.stat().st_mtime_ns, nib.load(p).get_fdata()) for p in images}

    images[1].unlink()  # as if killed before writing this case, leaving a half-written temporary file
    (out / "images" / f".{images[1].name}").write_bytes(b"\x1f\x8b torn")
    (out / "datalist.json").unlink()
    run_bundle(CONFIG_FILES, **settings)

    info = json.loads((out / "info.json").read_text())
    assert info["generated"] == 1 and info["num_cases"] == 4 and info["nfe"] == 2
    for p in sorted((out / "images").iterdir()):
        mtime, data = first[p.name]
        assert (p.stat().st_mtime_ns == mtime) == (p.name != images[1].name)  # only the missing case is new
        assert np.allclose(nib.load(p).get_fdata(), data, atol=1e-3)  # and it is the same image
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 4
    assert not list(out.rglob(".*"))


def test_output_dir_of_other_settings_is_refused(settings, tmp_path):
    out = tmp_path / "out"
    run_bundle(CONFIG_FILES, **settings)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(USER_ERRORS) as excinfo:
        run_bundle(CONFIG_FILES, **{**settings, "seed": 5})
    assert "holds samples made with other settings" in error_text(excinfo) and "'seed': (0, 5)" in error_text(excinfo)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
