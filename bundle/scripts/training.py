"""Training handlers for MONAI's ``SupervisedTrainer``: per-epoch seeding, resumable checkpoints, previews.

Every epoch's randomness (data order, augmentation, noise, times) is a function of (seed, epoch, rank), so a run
resumed from an epoch-end checkpoint repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import logging
import os
from copy import deepcopy

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism
from torch import nn

from .checkpoint import ModelCard, read_checkpoint, save_atomic, save_model
from .visualize import save_grid

logger = logging.getLogger(__name__)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    return getattr(network, "module", network)


class EpochSeeder:
    """At each epoch start, seeds torch/numpy/random, the dataset's random transforms and the sampler from
    (seed, epoch, rank)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = (self.seed * 1_000_003 + engine.state.epoch * 101 + rank()) % (2**31)
        set_determinism(epoch_seed)
        loader = engine.data_loader
        set_rnd(loader.dataset, epoch_seed)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(engine.state.epoch)


class EMA:
    """Exponential moving average of the network's weights, which sampling uses by default.

    After iteration n the average moves towards the weights by 1 - d with d = min(decay, (1 + n) / (10 + n)): it
    follows quickly early on and depends only on the iteration, so a resumed run averages exactly as before.

    Args:
        network: the trained network (or its DDP wrapper).
        decay: the long-run decay.
    """

    def __init__(self, network: nn.Module, decay: float = 0.999) -> None:
        self.network, self.decay = unwrap(network), decay
        self.model = deepcopy(self.network).requires_grad_(False)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        n = engine.state.iteration
        weight = 1.0 - min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(list(self.model.parameters()), list(self.network.parameters()), weight)
        for ema_buffer, buffer in zip(self.model.buffers(), self.network.buffers()):
            ema_buffer.copy_(buffer)


class TrainingCheckpoint:
    """Resumable training in one file, plus the model file; both written atomically.

    At start (every rank) it resumes from ``checkpoint_path`` if that exists. Every ``interval`` epochs and at
    the end, rank 0 writes the network, EMA, optimizer, LR scheduler, trainer state and card to
    ``checkpoint_path`` and the weights with the card to ``model_path``.
    """

    def __init__(
        self,
        checkpoint_path: str,
        model_path: str,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        card: ModelCard,
        ema: nn.Module | None = None,
        lr_scheduler=None,
        interval: int = 1,
    ) -> None:
        self.checkpoint_path, self.model_path, self.interval = checkpoint_path, model_path, interval
        self.network, self.ema, self.card = unwrap(network), ema, card
        self.objects = {"network": self.network, "optimizer": optimizer}
        if ema is not None:
            self.objects["ema"] = ema
        if lr_scheduler is not None:
            self.objects["lr_scheduler"] = lr_scheduler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def resume(self, engine: Engine) -> None:
        if not os.path.isfile(self.checkpoint_path):
            return
        state = read_checkpoint(self.checkpoint_path)
        self.card.load_state_dict(state["card"])
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        max_epochs = engine.state.max_epochs
        engine.load_state_dict({**state["trainer"], "max_epochs": max(max_epochs, state["trainer"]["max_epochs"])})
        engine.state.max_epochs = max_epochs
        logger.info(
            f"resumed from {self.checkpoint_path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        )
        if engine.state.epoch >= max_epochs:
            logger.info(f"already trained for {engine.state.epoch} >= max_epochs={max_epochs} epochs")
            engine.terminate()

    def save(self, engine: Engine) -> None:
        if rank() != 0:
            return
        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        state["trainer"] = {k: engine.state_dict()[k] for k in ("iteration", "epoch_length", "max_epochs")}
        state["card"] = self.card.state_dict()
        save_atomic(state, self.checkpoint_path)
        save_model(self.model_path, self.network, self.ema, self.card)


class PreviewHandler:
    """Every ``interval`` epochs, samples one batch of validation conditions with the (EMA) network, saves a
    PNG grid ``output_dir/previews/epoch_XXXX.png`` and adds it to TensorBoard.

    Args:
        network: the network to sample with (usually the EMA copy).
        sampler: a ``FlowSampler`` or ``DiffusionSampler``.
        batch: one collated batch of validation cases (image, label, class, index).
        image_size: the model's spatial shape.
        summary_writer: optional TensorBoard writer.
    """

    def __init__(self, network, sampler, batch, output_dir, image_size, interval=10, seed=0, summary_writer=None):
        self.network, self.sampler, self.batch = network, sampler, batch
        self.folder = os.path.join(output_dir, "previews")
        self.image_size, self.interval, self.seed, self.writer = list(image_size), interval, seed, summary_writer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        if rank() != 0:
            return
        net = unwrap(self.network)
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        rng = torch.get_rng_state()
        images, nfe = self.sampler.generate(net, self.batch, [1, *self.image_size], self.seed, device)
        torch.set_rng_state(rng)  # previews must not change the training's random stream
        net.train(was_training)
        rows = [("mask", list(self.batch["label"]))] if "label" in self.batch else []
        rows += [(f"sample ({nfe} NFE)", list(images)), ("real", list(self.batch["image"]))]
        os.makedirs(self.folder, exist_ok=True)
        path = save_grid(os.path.join(self.folder, f"epoch_{engine.state.epoch:04d}.png"), rows)
        if self.writer is not None:
            self.writer.add_image("preview", _read_png(path), engine.state.iteration, dataformats="HWC")


def _read_png(path: str):
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]
