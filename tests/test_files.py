"""Files and folders written whole: the old one stays until the new one is complete."""

import os
from pathlib import Path

import pytest
import torch

from scripts.files import atomic_path, save_torch, staged_folder


def test_atomic_save_replaces_whole_files_only(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_torch({"a": torch.ones(3)}, path)
    save_torch({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_torch({"a": torch.ones(3)}, path)
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_folder_that_fails_midway_leaves_the_old_folder(tmp_path):
    out = tmp_path / "data"
    with staged_folder(str(out)) as staging:
        (Path(staging) / "old.json").write_text("{}")
    with pytest.raises(RuntimeError, match="stopped"), staged_folder(str(out)) as staging:
        (Path(staging) / "new.json").write_text("{}")
        raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and os.listdir(out) == ["old.json"]
    with staged_folder(str(out)) as staging:
        (Path(staging) / "new.json").write_text("{}")
    assert os.listdir(out) == ["new.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
