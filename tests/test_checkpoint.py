"""Model files: round trip with weights_only, cards that refuse the wrong config."""

import pytest
import torch

from scripts.checkpoint import ModelCard, load_model, read_checkpoint, save_model
from scripts.networks import ConditionalUNet

SMALL = {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 4}


def _model(**kw):
    net = ConditionalUNet(2, **SMALL, **kw)
    return net, ModelCard("flow", net.config, [16, 16], [0.0, 900.0], "test")


def test_round_trip_loads_ema_by_default(tmp_path):
    net, card = _model(num_labels=4)
    ema = ConditionalUNet(2, **SMALL, num_labels=4)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    path = str(tmp_path / "model.pt")
    save_model(path, net, ema, card)
    assert set(torch.load(path, weights_only=True)) == {"model", "ema", "card"}
    fresh, fresh_card = _model(num_labels=4)
    saved = load_model(path, fresh, fresh_card)
    assert saved["intensity_range"] == [0.0, 900.0]
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ema.state_dict().values()))
    load_model(path, fresh, fresh_card, weights="model")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


def test_other_variant_shape_or_method_is_refused(tmp_path):
    net, card = _model(num_labels=4)
    path = str(tmp_path / "model.pt")
    save_model(path, net, None, card)
    other, other_card = _model(num_classes=3)
    with pytest.raises(ValueError, match=r"does not fit this config.*num_classes.*num_labels"):
        load_model(path, other, other_card)
    same, _ = _model(num_labels=4)
    with pytest.raises(ValueError, match="image_size"):
        load_model(path, same, ModelCard("flow", same.config, [32, 32]))
    with pytest.raises(ValueError, match="method 'flow'"):
        load_model(path, same, ModelCard("ddpm", same.config, [16, 16]))


def test_missing_corrupt_and_foreign_files(tmp_path):
    net, card = _model()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(str(tmp_path / "missing.pt"), net, card)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt"):
        read_checkpoint(str(corrupt))
    foreign = str(tmp_path / "foreign.pt")
    torch.save({"state_dict": net.state_dict()}, foreign)
    with pytest.raises(ValueError, match="not a model file"):
        load_model(foreign, net, card)


def test_pickled_objects_are_not_loaded(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "card": {}, "payload": ModelCard}, path)  # a pickled class: code, not data
    with pytest.raises(ValueError, match="weights-only"):
        read_checkpoint(path)
