"""Training handlers for MONAI's ``SupervisedTrainer``: per-epoch seeding, the weights' moving average, a learning
rate schedule, resumable checkpoints, throughput and previews.

Every epoch's randomness (data order, augmentation, noise, times) is a function of (seed, epoch, rank), so a run
resumed from an epoch-end checkpoint repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from copy import deepcopy
from functools import partial

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism
from torch import nn

from .checkpoint import ModelCard, load_model, read_checkpoint, read_model_file, save_model
from .data import load_batch
from .distributed import rank, world_size
from .files import save_torch
from .visualize import save_curve, save_grid

logger = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine")


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the module itself)."""
    return getattr(network, "module", network)


def seed_all(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and torch on every device. ``deterministic`` also makes cuDNN deterministic and turns
    its autotuner off (MONAI's ``set_determinism``): runs repeat bit for bit on a GPU, at some cost in speed;
    otherwise cuDNN picks its fastest kernels."""
    if deterministic:
        set_determinism(seed)
    else:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True


class EpochSeeder:
    """At each epoch start, seeds torch/numpy/random (``seed_all``), the dataset's random transforms and the
    sampler from (seed, epoch, rank)."""

    def __init__(self, seed: int, deterministic: bool = False) -> None:
        self.seed, self.deterministic = int(seed), deterministic

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = (self.seed * 1_000_003 + engine.state.epoch * 101 + rank()) % (2**31)
        seed_all(epoch_seed, self.deterministic)
        loader = engine.data_loader
        set_rnd(loader.dataset, epoch_seed)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(engine.state.epoch)


class EMA:
    """Exponential moving average of the network's weights, which sampling uses by default.

    After each optimizer step (once per ``accumulation_steps`` iterations; a step that the fp16 grad scaler skips is
    no step) the average moves towards the weights by 1 - d with d = min(decay, (1 + n) / (10 + n)) at iteration n:
    it follows quickly early on and depends only on the iteration, so a resumed run averages exactly as before.

    Args:
        network: the trained network (or its DDP wrapper).
        optimizer: the network's optimizer, whose steps the average follows.
        decay: the long-run decay.
    """

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, decay: float = 0.999) -> None:
        self.network, self.decay = unwrap(network), decay
        self.model = deepcopy(self.network).requires_grad_(False)
        self.stepped = False
        optimizer.register_step_post_hook(self._on_step)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _on_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        self.stepped = True

    def __call__(self, engine: Engine) -> None:
        if self.stepped:
            self.update(engine.state.iteration)
            self.stepped = False

    @torch.no_grad()
    def update(self, iteration: int) -> None:
        weight = 1.0 - min(self.decay, (1 + iteration) / (10 + iteration))
        torch._foreach_lerp_(list(self.model.parameters()), list(self.network.parameters()), weight)
        for ema_buffer, buffer in zip(self.model.buffers(), self.network.buffers()):
            ema_buffer.copy_(buffer)


def lr_factor(iteration: int, schedule: str, warmup: int, total: int, decay_start: int = 0) -> float:
    """The learning rate's factor at ``iteration`` (from 0): a linear warmup over ``warmup`` iterations, then constant,
    or for "cosine" constant until ``decay_start`` and then a cosine decay that reaches 0 at iteration ``total`` (and
    stays there)."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    if schedule == "constant":
        return 1.0
    start = max(warmup, decay_start)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(iteration - start, 0) / max(total - start, 1), 1.0)))


class LearningRateSchedule:
    """Before every iteration, sets the optimizer's learning rates to ``lr * lr_factor(i)``, where ``i`` counts the
    training's iterations from 0, resumed runs included. The schedule is a function of the trainer's iteration and
    these settings alone: it holds no state, so a resumed, continued or extended run stays on it.

    Args:
        lr: the peak learning rate.
        schedule: "constant" or "cosine".
        warmup: warmup iterations (0 for none).
        total: the iteration at which "cosine" reaches 0 (the run's iterations).
        decay_start: the iteration at which "cosine" leaves its peak (0: right after the warmup); a later one gives a
            constant run with a cosine tail (warmup-stable-decay).
    """

    def __init__(self, lr: float, schedule: str = "constant", warmup: int = 0, total: int = 0, decay_start: int = 0):
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
        self.lr = lr
        self.factor = partial(
            lr_factor, schedule=schedule, warmup=int(warmup), total=int(total), decay_start=int(decay_start)
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self.set_lr)

    def set_lr(self, engine: Engine) -> None:
        lr = self.lr * self.factor(engine.state.iteration - 1)  # ignite counts the iteration before this event
        for group in engine.optimizer.param_groups:
            group["lr"] = lr


class TrainingCheckpoint:
    """Resumable training in one file, plus the model file; both written atomically.

    At start (every rank) it resumes from ``checkpoint_path`` if that exists. Otherwise, given ``continue_path`` (a
    model file whose card fits), training goes on from that model: its weights, moving average, iterations, epochs
    and card provenance carry on, while the optimizer starts afresh (a model file holds no optimizer state; the card
    records the iteration under ``optimizer_restarted``), and training files whose bytes differ from the card's (e.g.
    the default data rebuilt on another machine) are recorded under ``data_history``.
    Otherwise, given ``init_path`` (a model file whose card fits), the network and its moving average start from
    that model's weights (its moving average where it has one) with counts from zero: fine-tuning, reflow.

    Every ``interval`` epochs and at the end, rank 0 writes the network, EMA, optimizer, the trainer's grad scaler
    (mixed precision), trainer state and card to ``checkpoint_path`` and the weights with the card to
    ``model_path``; when the validation loss just measured (``ValidationLoss``, attached before) is the run's lowest,
    the weights also go to ``best_path``. A state that the checkpoint lacks (e.g. the grad scaler when mixed
    precision is turned on) starts afresh, with a warning.

    The card's provenance holds ``provenance`` (data and code fingerprints, settings; see ``provenance.py``) and
    the run's iterations, epochs and training seconds, summed over resumed runs. A checkpoint made on other
    training data is refused; a resumed run whose code differs adds an entry to ``code_history``, one whose settings
    differ an entry to ``settings_history``.
    """

    def __init__(
        self,
        checkpoint_path: str,
        model_path: str,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        card: ModelCard,
        ema: nn.Module | None = None,
        interval: int = 1,
        init_path: str | None = None,
        provenance: dict | None = None,
        continue_path: str | None = None,
        best_path: str | None = None,
    ) -> None:
        self.checkpoint_path, self.model_path, self.best_path = checkpoint_path, model_path, best_path
        self.interval = interval
        self.init_path, self.continue_path, self.provenance = init_path, continue_path, dict(provenance or {})
        self.network, self.ema, self.card = unwrap(network), ema, card
        self.objects = {"network": self.network, "optimizer": optimizer}
        if ema is not None:
            self.objects["ema"] = ema

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _objects(self, engine: Engine) -> dict:
        scaler = getattr(engine, "scaler", None)  # MONAI's trainer makes it in run() when amp is on
        return self.objects if scaler is None else {**self.objects, "scaler": scaler}

    def resume(self, engine: Engine) -> None:
        self.started = time.perf_counter()
        if os.path.isfile(self.checkpoint_path):
            source, state = self.checkpoint_path, read_checkpoint(self.checkpoint_path)
        elif self.continue_path:
            source, state = self.continue_path, self._model_file_state(engine)
        else:
            self._start_provenance(engine)
            if self.init_path:
                self.initialise()
            return
        self.card.load_state_dict(state["card"])
        self._resume_provenance(state["trainer"]["iteration"], other_data=source == self.continue_path)
        for name, obj in self._objects(engine).items():
            if name in state:
                obj.load_state_dict(state[name])
            else:
                logger.warning(f"{source} has no {name} state: it starts afresh")
        max_epochs = engine.state.max_epochs
        engine.load_state_dict({**state["trainer"], "max_epochs": max(max_epochs, state["trainer"]["max_epochs"])})
        engine.state.max_epochs = max_epochs
        logger.info(f"resumed from {source} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")
        if engine.state.epoch >= max_epochs:
            logger.info(f"already trained for {engine.state.epoch} >= max_epochs={max_epochs} epochs")
            engine.terminate()

    def _start_provenance(self, engine: Engine) -> None:
        current = dict(self.provenance)
        code = current.pop("code", None)
        self.card.provenance = {
            **current,
            "init_ckpt": self.init_path,
            "code_history": [{"from_iteration": 0, **(code or {})}],
            "iterations": 0,
            "epochs": 0,
            "iterations_per_epoch": engine.state.epoch_length,
            "training_seconds": 0.0,
            "validation_loss": [],
        }

    def _model_file_state(self, engine: Engine) -> dict:
        """The model file ``continue_path`` as a checkpoint's state: weights, moving average, card and trainer counts;
        no optimizer state."""
        ckpt = read_model_file(self.continue_path)
        provenance = ckpt["card"].get("provenance") or {}
        if "iterations" not in provenance:
            raise ValueError(
                f"{self.continue_path} does not record its training iterations: use init_ckpt to fine-tune from it"
            )
        iteration, epochs = provenance["iterations"], provenance["epochs"]
        if iteration != epochs * engine.state.epoch_length:
            raise ValueError(
                f"{self.continue_path} was trained {epochs} epochs of {iteration / max(epochs, 1):g} iterations, "
                f"this run's epochs have {engine.state.epoch_length}: continue_ckpt goes on with epochs of the same "
                "length (the same number of training cases and batch size); use init_ckpt to fine-tune from it"
            )
        provenance.setdefault("optimizer_restarted", []).append(
            {"iteration": iteration, "why": f"continued from the model file {self.continue_path}: no optimizer state"}
        )
        trainer = {"iteration": iteration, "epoch_length": engine.state.epoch_length, "max_epochs": epochs}
        state = {"network": ckpt["model"], "card": ckpt["card"], "trainer": trainer}
        if self.ema is not None:
            state["ema"] = ckpt.get("ema", ckpt["model"])
        return state

    def _resume_provenance(self, iteration: int, other_data: bool = False) -> None:
        """Brings the resumed card's provenance up to this run: its settings, with the values they replace (other than
        ``max_epochs``) under ``settings_history``; a new ``code_history`` entry if the code changed; other training
        data are refused, or with ``other_data`` recorded under ``data_history``."""
        saved, current = self.card.provenance, dict(self.provenance)
        code = current.pop("code", None)

        def same_data(a: dict, b: dict) -> bool:  # the bytes, wherever the files lie
            return all(a.get(k) == b.get(k) for k in ("datalist_sha256", "files_sha256", "num_cases"))

        if saved.get("data") and current.get("data") and not same_data(saved["data"], current["data"]):
            if not other_data:
                raise ValueError(
                    f"{self.checkpoint_path} was trained on other data ({saved['data']}) than this run's "
                    f"({current['data']}): choose another output_dir, or init_ckpt to fine-tune from its model file"
                )
            logger.warning(f"{self.continue_path} was trained on other files than this run's: see data_history")
            saved.setdefault("data_history", []).append({"until_iteration": iteration, **saved["data"]})
            saved["data"] = current["data"]
        old, new = saved.get("settings") or {}, current.get("settings") or {}
        replaced = {k: old.get(k) for k in new if k != "max_epochs" and old.get(k) != new[k]}
        if old and replaced:
            saved.setdefault("settings_history", []).append({"until_iteration": iteration, **replaced})
        history = saved.setdefault("code_history", [])
        if code and (not history or {k: v for k, v in history[-1].items() if k != "from_iteration"} != code):
            history.append({"from_iteration": iteration, **code})
        saved.update({k: v for k, v in current.items() if k != "data"})

    def initialise(self) -> None:
        """Loads the weights of the model file ``init_path`` into the network and its moving average."""
        card = load_model(self.init_path, self.network, self.card)
        if card["intensity_range"] != self.card.intensity_range:
            raise ValueError(
                f"{self.init_path} was trained with intensity_range {card['intensity_range']}, this run scales the "
                f"data to {self.card.intensity_range}: set intensity_range to the model's"
            )
        if self.ema is not None:
            self.ema.load_state_dict(self.network.state_dict())
        logger.info(f"initialised the network from {self.init_path}")

    def save(self, engine: Engine) -> None:
        if rank() != 0:
            return
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        state["trainer"] = {k: engine.state_dict()[k] for k in ("iteration", "epoch_length", "max_epochs")}
        now = time.perf_counter()
        provenance = self.card.provenance
        provenance["training_seconds"] = round(provenance.get("training_seconds", 0.0) + now - self.started, 1)
        provenance["iterations"], provenance["epochs"] = engine.state.iteration, engine.state.epoch
        self.started = now
        state["card"] = self.card.state_dict()
        save_torch(state, self.checkpoint_path)
        save_model(self.model_path, self.network, self.ema, self.card)
        curve = provenance.get("validation_loss") or []
        lowest = curve and curve[-1][0] == engine.state.iteration and curve[-1][1] <= min(v for _, v in curve)
        if self.best_path and lowest:
            save_model(self.best_path, self.network, self.ema, self.card)


class TrainingStats:
    """At each epoch end, puts the epoch's throughput (images per second, all ranks together) and the learning rate
    into ``engine.state.metrics``, where the console, TensorBoard and MLflow handlers log them."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.count)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    def start(self, engine: Engine) -> None:
        self.images, self.time = 0, time.perf_counter()

    def count(self, engine: Engine) -> None:
        self.images += len(engine.state.batch)  # MONAI decollates the batch: one item per image

    def report(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self.time
        engine.state.metrics["images_per_second"] = self.images * world_size() / seconds
        engine.state.metrics["lr"] = engine.optimizer.param_groups[0]["lr"]


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


class ValidationLoss:
    """Every ``interval`` epochs, the training objective of ``network`` (usually the EMA copy) on fixed validation
    cases, with the same noise and times at every evaluation, so that the curve shows when training has flattened.

    Appends [iteration, loss] to the card's ``provenance["validation_loss"]`` (the model file keeps the curve),
    puts it in ``engine.state.metrics`` (console, TensorBoard, MLflow) and plots ``output_dir/validation_loss.png``.

    Args:
        network: the network to evaluate.
        prepare_batch: the trainer's kind of prepare-batch (same path), without condition dropout.
        cases: validation cases; up to ``max_cases`` of them, evenly spread, are used.
        transforms: the model's input transforms, without augmentation.
        card: the run's ``ModelCard``.
        output_dir: where the plot goes.
        interval: epochs between evaluations.
        seed: seed of the noise and times (the same at every evaluation).
        repeats: noise and time draws per case.
    """

    def __init__(
        self,
        network: nn.Module,
        prepare_batch,
        cases,
        transforms,
        card: ModelCard,
        output_dir: str,
        interval: int = 5,
        seed: int = 0,
        repeats: int = 4,
        max_cases: int = 64,
        batch_size: int = 16,
    ) -> None:
        n = min(max_cases, len(cases))
        picks = sorted({round(i * (len(cases) - 1) / max(n - 1, 1)) for i in range(n)})
        chosen = [cases[i] for i in picks]
        self.batches = [load_batch(chosen[i : i + batch_size], transforms) for i in range(0, len(chosen), batch_size)]
        self.network, self.prepare_batch, self.card = network, prepare_batch, card
        self.path = os.path.join(output_dir, "validation_loss.png")
        self.interval, self.seed, self.repeats = interval, seed, repeats

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def loss(self) -> float:
        """The mean squared error per element over the fixed cases and draws."""
        net = unwrap(self.network)
        was_training, device = net.training, next(net.parameters()).device
        net.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(self.seed)
        total, count = 0.0, 0
        for _ in range(self.repeats):
            for batch in self.batches:
                x, target, _, kwargs = self.prepare_batch(batch, device)
                total += float(torch.nn.functional.mse_loss(net(x, **kwargs), target, reduction="sum"))
                count += target.numel()
        torch.set_rng_state(rng)
        net.train(was_training)
        return total / count

    def __call__(self, engine: Engine) -> None:
        if rank() != 0:
            return
        value = self.loss()
        curve = self.card.provenance.setdefault("validation_loss", [])
        curve.append([engine.state.iteration, round(value, 6)])
        engine.state.metrics["validation_loss"] = value
        logger.info(f"epoch {engine.state.epoch}, iteration {engine.state.iteration}: validation loss {value:.5f}")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        save_curve(self.path, curve, "iteration", "validation loss (MSE)", "fixed validation cases, noise and times")


def _read_png(path: str):
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]
