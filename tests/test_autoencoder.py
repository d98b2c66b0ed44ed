"""The 3D autoencoder: its bundle training (real iterations on real small volumes, resumed), its shapes, its loss
and its model file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.transforms import GaussianSmooth

from conftest import train_losses
from scripts.autoencoder import Autoencoder, AutoencoderLoss, latent_scale, load_autoencoder
from scripts.data import input_transforms, load_cases

pytestmark = pytest.mark.usefixtures("one_thread")

# a two-level autoencoder (2x downsampling) on 32^3 volumes, trained on 16^3 patches, one volume per iteration
TINY_AE = {
    "autoencoder#channels": [4, 8],
    "autoencoder#latent_channels": 2,
    "autoencoder#norm_num_groups": 4,
    "image_size": [32, 32, 32],
    "patch_size": [16, 16, 16],
    "batch_size": 1,
    "checkpoint_interval": 1,
}


def train_autoencoder(data_dir: Path, output_dir: Path, epochs: int) -> list[float]:
    """Runs ``train.json`` + ``train_autoencoder.json`` with ``TINY_AE`` for ``epochs`` epochs (3 iterations each:
    3 training subjects); returns the loss of every iteration this run made."""
    overrides = {
        **TINY_AE,
        "dataset_dir": str(data_dir),
        "datalist": str(data_dir / "datalist_3d.json"),
        "output_dir": str(output_dir),
        "train#trainer#max_epochs": epochs,
    }
    return train_losses(["train.json", "train_autoencoder.json"], **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> tuple[Path, list[float]]:
    """A tiny autoencoder trained for one epoch through the bundle: its output folder and losses."""
    out = tmp_path_factory.mktemp("autoencoder")
    return out, train_autoencoder(data_dir, out, epochs=1)


def test_training_writes_a_model_file_with_an_autoencoder_card_and_a_latent_scale(trained):
    out, losses = trained
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    card = ckpt["card"]
    assert card["method"] == "autoencoder" and card["image_size"] == [32, 32, 32]
    assert card["network"]["channels"] == [4, 8] and card["network"]["latent_channels"] == 2
    provenance = card["provenance"]
    assert provenance["iterations"] == 3 and provenance["settings"]["patch_size"] == [16, 16, 16]
    assert [it for it, _ in provenance["validation_loss"]] == [3]
    assert 0 < provenance["latent_scale"] < math.inf


def test_latent_scale_is_the_std_of_the_training_latents(trained, data_dir):
    out, _ = trained
    network, card = load_autoencoder(str(out / "model.pt"))
    transforms = input_transforms(card["image_size"], 0, card["intensity_range"], resize=False)
    cases = load_cases(str(data_dir / "datalist_3d.json"), "training")
    images = [transforms(case)["image"].as_tensor()[None] for case in cases]
    with torch.no_grad():
        latents = torch.cat([network.encode(x) for x in images])
    assert latents.shape == (3, 2, 16, 16, 16)
    assert card["provenance"]["latent_scale"] == pytest.approx(float(latents.double().std()), rel=1e-3)
    assert latent_scale(network, images) == pytest.approx(card["provenance"]["latent_scale"], rel=1e-4)


def test_a_rerun_resumes_from_the_checkpoint(trained, data_dir, tmp_path):
    out, first_losses = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint.pt", "model.pt"):
        (resumed / name).write_bytes((out / name).read_bytes())
    losses = train_autoencoder(data_dir, resumed, epochs=2)
    assert len(losses) == 3  # only the second epoch's iterations: the first came from the checkpoint
    card = torch.load(resumed / "model.pt", weights_only=True)["card"]
    assert card["provenance"]["iterations"] == 6
    assert [it for it, _ in card["provenance"]["validation_loss"]] == [3, 6]  # the first run's point is kept


def test_encode_decode_shapes_and_a_clear_error_for_grids_that_do_not_divide():
    torch.manual_seed(0)
    net = Autoencoder(spatial_dims=3, channels=(4, 8, 8), latent_channels=2, norm_num_groups=4).eval()
    x = torch.randn(2, 1, 16, 24, 8)
    with torch.no_grad():
        z = net.encode(x)
        assert z.shape == (2, 2, 4, 6, 2)
        assert net.decode(z).shape == x.shape
        assert torch.equal(net(x), net.decode(z))  # eval mode: the reconstruction from the latent mean
    net.train()
    reconstruction, kl = net(x)
    assert reconstruction.shape == x.shape and kl.shape == (2,) and (kl >= 0).all()
    with pytest.raises(ValueError, match=r"divide by 4.*\(16, 18, 8\)"):
        net.encode(torch.randn(1, 1, 16, 18, 8))


def test_the_loss_sees_blur_that_a_voxel_l1_does_not(data_dir):
    case = load_cases(str(data_dir / "datalist_3d.json"), "test")[0]
    x = input_transforms([32, 32, 32], 0, None, resize=False)(case)["image"].as_tensor()[None]
    x = x / x.abs().max()
    blurred = GaussianSmooth(sigma=1.0)(x[0])[None]
    error = float((blurred - x).abs().mean())
    shifted = x + error  # the same voxel L1 as the blurred copy, but every edge intact
    kl = torch.zeros(1)
    loss = AutoencoderLoss(kl_weight=1e-6, gradient_weight=1.0)
    voxel_only = AutoencoderLoss(kl_weight=1e-6, gradient_weight=0.0)
    assert voxel_only((blurred, kl), x) == pytest.approx(float(voxel_only((shifted, kl), x)), rel=1e-4)
    assert loss((x, kl), x) == 0
    assert loss((blurred, kl), x) > 1.2 * loss((shifted, kl), x)


def test_load_autoencoder_reads_the_model_file_weights_only(trained, tmp_path):
    out, _ = trained
    network, card = load_autoencoder(str(out / "model.pt"))
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in network.state_dict().items())
    assert card["method"] == "autoencoder" and not network.training
    other = tmp_path / "other.pt"
    torch.save({**ckpt, "card": {**ckpt["card"], "method": "flow"}}, other)
    with pytest.raises(ValueError, match="not an autoencoder"):
        load_autoencoder(str(other))


def test_quality_benchmark_records_reconstruction_metrics(trained, data_dir, tmp_path):
    from autoencoder_quality import main

    out, _ = trained
    record = main(str(out / "model.pt"), str(data_dir / "datalist_3d.json"), out_dir=str(tmp_path))
    assert record["latent_shape"] == [2, 16, 16, 16] and len(record["cases"]) == 2
    mean = record["mean"]
    assert math.isfinite(mean["psnr"]) and -1 <= mean["ssim"] <= 1 and mean["hf_power_ratio"] > 0
    assert set(mean["mae_per_tissue"]) == {"csf_and_other_brain", "grey_matter", "white_matter"}
    assert all(v > 0 for v in mean["mae_per_tissue"].values())
    assert mean["encode_seconds"] > 0 and mean["decode_seconds"] > 0
    assert (tmp_path / "autoencoder_quality.json").is_file() and (tmp_path / "autoencoder_quality.png").is_file()
