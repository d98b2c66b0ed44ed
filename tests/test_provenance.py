"""The model card's provenance: data and code fingerprints, iterations, time and the validation-loss curve, kept
across resumed runs; a checkpoint of other data is not resumed."""

import json
import shutil

import pytest
import torch

from conftest import USER_ERRORS, error_text, train
from scripts.data import load_cases
from scripts.provenance import code_version, data_fingerprint


def _card(path) -> dict:
    return torch.load(path, weights_only=True)["card"]["provenance"]


def test_card_records_the_run_and_resumes_it(data_dir, small_datalist, tmp_path):
    out = tmp_path / "run"
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs=2, checkpoint_interval=1, validation_interval=1)
    first = _card(out / "model.pt")
    cases = load_cases(str(small_datalist), "training", str(data_dir), True, 3)
    assert first["data"]["files_sha256"] == data_fingerprint(str(small_datalist), cases)["files_sha256"]
    assert first["iterations"] == 2 * first["iterations_per_epoch"] and first["epochs"] == 2
    assert first["settings"]["batch_size"] == 4 and first["settings"]["seed"] == 0
    assert [c["scripts_sha256"] for c in first["code_history"]] == [code_version()["scripts_sha256"]]
    assert [point[0] for point in first["validation_loss"]] == [first["iterations_per_epoch"], first["iterations"]]
    assert (out / "validation_loss.png").stat().st_size > 1000
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs=3, checkpoint_interval=1, validation_interval=1)
    second = _card(out / "model.pt")
    assert second["epochs"] == 3 and len(second["validation_loss"]) == 3
    assert second["validation_loss"][:2] == first["validation_loss"]  # the curve goes on where it stopped
    assert second["training_seconds"] > first["training_seconds"]


def test_validation_loss_is_the_same_for_the_same_weights(data_dir, small_datalist, tmp_path):
    train("mask_class_2d", data_dir, str(small_datalist), tmp_path / "a", epochs=1, validation_interval=1)
    train("mask_class_2d", data_dir, str(small_datalist), tmp_path / "b", epochs=1, validation_interval=1, lr=0.0)
    a, b = (_card(tmp_path / n / "model.pt")["validation_loss"][-1][1] for n in ("a", "b"))
    assert a != b  # trained weights against the initial ones (lr 0)
    again = tmp_path / "b2"  # fixed noise and times: the same weights give the same loss
    train("mask_class_2d", data_dir, str(small_datalist), again, epochs=1, validation_interval=1, lr=0.0)
    assert _card(again / "model.pt")["validation_loss"][-1][1] == b


def test_a_checkpoint_of_other_data_is_not_resumed(data_dir, small_datalist, tmp_path):
    out = tmp_path / "run"
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs=1)
    other = json.loads(small_datalist.read_text())
    other["training"] = other["training"][:-1]
    (data_dir / "datalist_other.json").write_text(json.dumps(other))
    with pytest.raises(USER_ERRORS) as excinfo:
        train("mask_class_2d", data_dir, str(data_dir / "datalist_other.json"), out, epochs=2)
    assert "trained on other data" in error_text(excinfo)


def test_training_continues_from_a_model_file(data_dir, small_datalist, tmp_path):
    """continue_ckpt: a shipped model file (no optimizer state) trained on, here on other files of the same number
    with learning rate 0: the weights, counts and curve carry on, and the card records the fresh optimizer and the
    data it left. Epochs of another length are refused."""
    first_dir, next_dir = tmp_path / "first", tmp_path / "next"
    train("mask_class_2d", data_dir, str(small_datalist), first_dir, epochs=2, validation_interval=1)
    datalist = json.loads(small_datalist.read_text())
    model = str(first_dir / "model.pt")
    fewer = data_dir / "datalist_fewer.json"
    fewer.write_text(json.dumps({**datalist, "training": datalist["training"][:-4]}))
    with pytest.raises(USER_ERRORS) as excinfo:
        train("mask_class_2d", data_dir, str(fewer), tmp_path / "fewer", 3, continue_ckpt=model)
    assert "use init_ckpt" in error_text(excinfo)
    other = data_dir / "datalist_swapped.json"
    other.write_text(json.dumps({**datalist, "training": datalist["training"][:-1] + datalist["validation"][:1]}))
    train("mask_class_2d", data_dir, str(other), next_dir, 3, continue_ckpt=model, lr=0.0, validation_interval=1)
    before, after = (torch.load(d / "model.pt", weights_only=True) for d in (first_dir, next_dir))
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])  # lr 0: the same weights
    first, card = before["card"]["provenance"], after["card"]["provenance"]
    assert card["epochs"] == 3 and card["iterations"] == first["iterations"] + card["iterations_per_epoch"]
    assert card["validation_loss"][:2] == first["validation_loss"] and len(card["validation_loss"]) == 3
    assert [r["iteration"] for r in card["optimizer_restarted"]] == [first["iterations"]]
    assert card["data_history"] == [{"until_iteration": first["iterations"], **first["data"]}]
    assert card["data"]["files_sha256"] != first["data"]["files_sha256"]


def test_the_data_fingerprint_follows_the_files_not_their_folder(data_dir, small_datalist, tmp_path):
    cases = load_cases(str(small_datalist), "training", str(data_dir), True, 3)[:2]
    copies = []
    for case in cases:
        copy = dict(case)
        for key in ("image", "label"):
            folder = tmp_path / key
            folder.mkdir(exist_ok=True)
            copy[key] = shutil.copy(case[key], folder)  # the same file names, in another folder
        copies.append(copy)
    original, moved = data_fingerprint(str(small_datalist), cases), data_fingerprint(str(small_datalist), copies)
    assert original["files_sha256"] == moved["files_sha256"]
    with open(copies[0]["image"], "ab") as f:
        f.write(b"\0")
    assert data_fingerprint(str(small_datalist), copies)["files_sha256"] != original["files_sha256"]


def test_the_segmenter_config_records_its_data_and_settings(data_dir, small_datalist, tmp_path):
    from conftest import run_bundle

    path = tmp_path / "segmenter.pt"
    overrides = {"dataset_dir": str(data_dir), "datalist": str(small_datalist), "ckpt_path": str(path)}
    run_bundle(["train_segmenter.json"], image_size=[16, 16], iterations=2, batch_size=4, **overrides)
    provenance = _card(path)
    cases = load_cases(str(small_datalist), "training", str(data_dir), True)
    assert provenance["data"]["files_sha256"] == data_fingerprint(str(small_datalist), cases)["files_sha256"]
    assert provenance["settings"]["iterations"] == 2 and provenance["code"] == code_version()


def test_the_lowest_validation_loss_keeps_its_model_file(data_dir, small_datalist, tmp_path):
    """model_best.pt holds the weights at the lowest validation loss: here the first epoch's, as a learning rate far
    too high on resume sends the loss up; the card records the learning rate it replaced."""
    out = tmp_path / "run"
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs=1, checkpoint_interval=1, validation_interval=1)
    first = torch.load(out / "model.pt", weights_only=True)
    train("mask_class_2d", data_dir, str(small_datalist), out, 3, checkpoint_interval=1, validation_interval=1, lr=1.0)
    last, best = (torch.load(out / name, weights_only=True) for name in ("model.pt", "model_best.pt"))
    curve = last["card"]["provenance"]["validation_loss"]
    assert min(curve, key=lambda point: point[1]) == curve[0] and curve[-1][1] > curve[0][1]
    assert best["card"]["provenance"]["iterations"] == curve[0][0] == first["card"]["provenance"]["iterations"]
    assert all(torch.equal(best["ema"][k], first["ema"][k]) for k in first["ema"])
    assert last["card"]["provenance"]["settings_history"] == [{"until_iteration": curve[0][0], "lr": 0.001}]


def test_a_card_names_its_datalist_without_the_machines_folders(tmp_path):
    from scripts.provenance import BUNDLE_TOP, portable_path

    assert portable_path(str(BUNDLE_TOP / "bundle" / "data" / "datalist_2d.json")) == "bundle/data/datalist_2d.json"
    (tmp_path / "mine.json").write_text("{}")
    assert data_fingerprint(str(tmp_path / "mine.json"), [])["datalist"] == "mine.json"
