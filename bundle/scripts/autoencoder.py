"""A 3D (or 2D) autoencoder for latent flow matching: MONAI's ``AutoencoderKL``, its loss, and the latent scale.

The network is fully convolutional (no attention levels, no non-local attention), so it encodes any grid whose
sides divide by its downsampling factor 2^(levels - 1): it trains on random patches and encodes whole volumes.
Latent flow matching divides the latents by ``latent_scale`` (the std of the training volumes' latent means, as in
latent diffusion), stored in the model card's provenance at the end of training (``LatentScale``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.networks.nets import AutoencoderKL
from torch import nn

from .batches import without_meta
from .checkpoint import ModelCard, load_model, read_model_file
from .data import load_batch
from .distributed import rank


class Autoencoder(nn.Module):
    """``AutoencoderKL`` without attention: image (B, C, *spatial) <-> latent (B, latent_channels, *spatial / f),
    f = 2^(len(channels) - 1).

    In training mode ``forward`` returns (reconstruction from a sampled latent, KL divergence per case (B,)), what
    ``AutoencoderLoss`` takes; in eval mode the reconstruction from the latent mean only, so that the bundle's
    ``ValidationLoss`` (an MSE of the eval-mode output against the input) measures reconstruction unchanged.

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels per level (each level after the first halves the grid).
        latent_channels: channels of the latent.
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups (must divide every entry of ``channels``).
        in_channels: image channels.
        activation_checkpointing: recompute the encoder's and decoder's activations in the backward pass (less
            memory for whole volumes, more compute); not part of ``config``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        channels: Sequence[int] = (32, 64, 64),
        latent_channels: int = 4,
        num_res_blocks: int = 1,
        norm_num_groups: int = 16,
        in_channels: int = 1,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.config = {
            "spatial_dims": spatial_dims,
            "channels": list(channels),
            "latent_channels": latent_channels,
            "num_res_blocks": num_res_blocks,
            "norm_num_groups": norm_num_groups,
            "in_channels": in_channels,
        }
        self.factor = 2 ** (len(channels) - 1)
        self.autoencoder = AutoencoderKL(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=tuple(channels),
            attention_levels=(False,) * len(channels),
            latent_channels=latent_channels,
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
            use_checkpoint=activation_checkpointing,
        )

    def check_shape(self, x: torch.Tensor) -> None:
        """Raises ValueError unless every spatial side of ``x`` (B, C, *spatial) divides by the downsampling."""
        if any(s % self.factor for s in x.shape[2:]):
            raise ValueError(
                f"the autoencoder encodes grids whose sides divide by {self.factor} (its downsampling), got spatial "
                f"shape {tuple(x.shape[2:])}: pad or crop the image to a multiple of {self.factor}"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, *spatial) -> latent means (B, latent_channels, *spatial / f)."""
        self.check_shape(x)
        return self.autoencoder.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, *latent_spatial) -> images (B, C, *latent_spatial * f)."""
        return self.autoencoder.decode(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Training: x (B, C, *spatial) -> (reconstruction (B, C, *spatial), KL (B,)); eval: the reconstruction."""
        if not self.training:
            return self.decode(self.encode(x))
        self.check_shape(x)
        reconstruction, mu, sigma = self.autoencoder(x)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * sigma.log() - 1).flatten(1).sum(1)
        return reconstruction, kl


def image_gradients(x: torch.Tensor) -> list[torch.Tensor]:
    """Forward differences of x (B, C, *spatial) along each spatial axis (one shorter along that axis)."""
    return [x.diff(dim=axis) for axis in range(2, x.dim())]


def load_autoencoder(path: str, device: str | torch.device = "cpu") -> tuple[Autoencoder, dict]:
    """The autoencoder of a model file (its moving-average weights), in eval mode on ``device``, and its card."""
    saved = read_model_file(path)["card"]
    if saved.get("method") != "autoencoder":
        raise ValueError(f"{path} holds a {saved.get('method')!r} model, not an autoencoder")
    network = Autoencoder(**saved["network"])
    card = load_model(path, network, ModelCard("autoencoder", network.config, saved["image_size"]))
    return network.to(device).eval(), card


class AutoencoderLoss(nn.Module):
    """L1 reconstruction + ``kl_weight`` * KL (per case, summed over the latent, mean over cases) +
    ``gradient_weight`` * L1 between the image gradients of reconstruction and target.

    Why a gradient term: an L1 (or MSE) on voxels is satisfied by a slightly blurred reconstruction, since a
    blurred edge costs little over the few voxels it spans, and autoencoders trained on it alone come out smooth.
    Latent diffusion adds a perceptual (LPIPS) term for that, which needs pretrained weights that cannot be
    downloaded here; an L1 on finite differences asks for the edges' heights directly, costs two extra
    subtractions, and is zero only when the reconstruction's local contrast equals the target's (a constant offset,
    which it ignores, is the voxel L1's job). An adversarial (``PatchDiscriminator``) term is left out: it needs a
    second optimizer and network in the trainer loop, which ``SupervisedTrainer`` does not have.

    Args:
        kl_weight: weight of the KL divergence (small: the latent stays close to the image, lightly regularised).
        gradient_weight: weight of the gradient L1.
    """

    def __init__(self, kl_weight: float = 1e-6, gradient_weight: float = 1.0) -> None:
        super().__init__()
        self.kl_weight, self.gradient_weight = kl_weight, gradient_weight

    def sharpness(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean L1 between the image gradients of reconstruction and target (B, C, *spatial): a scalar."""
        pairs = zip(image_gradients(reconstruction), image_gradients(target))
        return sum(F.l1_loss(a, b) for a, b in pairs) / (target.dim() - 2)

    def forward(self, output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``output``: the training-mode network's (reconstruction (B, C, *spatial), KL (B,)); target like the
        reconstruction. Returns a scalar."""
        reconstruction, kl = output
        return (
            F.l1_loss(reconstruction, target)
            + self.kl_weight * kl.mean()
            + self.gradient_weight * self.sharpness(reconstruction, target)
        )


@torch.no_grad()
def latent_scale(network: Autoencoder, images: Iterable[torch.Tensor]) -> float:
    """The standard deviation of the latent means of ``images`` (batches (B, C, *spatial), on the network's
    device), over every case, channel and position: latents divided by it have unit variance."""
    was_training = network.training
    network.eval()
    total = total_sq = count = 0.0
    for x in images:
        z = network.encode(x).double()
        total, total_sq, count = total + float(z.sum()), total_sq + float(z.pow(2).sum()), count + z.numel()
    network.train(was_training)
    mean = total / count
    return (total_sq / count - mean**2) ** 0.5


class LatentScale:
    """When training completes, stores ``latent_scale`` of ``network`` (the EMA copy, which a model file's users
    load) over the training ``cases`` (whole volumes, through the eval ``transforms``) as the card's
    ``provenance["latent_scale"]``. Attach it before ``TrainingCheckpoint``, whose save at completion writes the
    card into the model file.

    Args:
        network: the autoencoder to measure.
        cases: the training cases; up to ``max_cases`` of them, evenly spread, are encoded.
        transforms: the model's input transforms without augmentation or patches.
        card: the run's ``ModelCard``.
    """

    def __init__(self, network: Autoencoder, cases, transforms, card: ModelCard, max_cases: int = 64) -> None:
        step = max(1, -(-len(cases) // max_cases))
        self.network, self.cases, self.transforms, self.card = network, list(cases)[::step], transforms, card

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if rank() != 0:
            return
        device = next(self.network.parameters()).device
        images = (without_meta(load_batch([case], self.transforms)["image"], device) for case in self.cases)
        self.card.provenance["latent_scale"] = round(latent_scale(self.network, images), 6)
