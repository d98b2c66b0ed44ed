"""This project against the MOTFM reference code (github.com/milad1378yz/MOTFM) on the reference's network
configuration, measured side by side in one run.

    python bench/reference_compare.py --reference PATH [--options fp32,bf16] [--reference_options fp32,bf16]
        [--rounds 3] [--steps 4] [--threads 2] [--profile true] [--note TEXT] [--out results/reference_compare.json]

The network, in both codes: MONAI's diffusion UNet + ControlNet, channels 32/64/128, one residual block a level,
attention at the last level, class (cross-attention) and mask conditioning (5.53 M parameters); 64 x 64 slices of
the bundle's training data (``--cases`` of them, evenly spread); batch 8; ``--threads`` torch threads. Seconds per
image of

- forward: one network call on a batch, without gradients;
- step: one iteration of the code's own training loop in steady state. Here the bundle's ``train.json`` trainer
  (data loading with augmentation, prepare-batch with condition dropout, forward, loss, backward, AdamW, EMA, LR
  schedule, logging); there its ``trainer.py`` Lightning module and data module (Adam, logging), with one optimizer
  step per batch as here (its ``gradient_accumulation_steps`` default is 8), without checkpoints or validation;
- bare step: forward, loss, backward and optimizer step on one fixed batch, no framework;
- sampling: 10 Euler steps (10 NFE, counted) per image: here ``FlowSampler.generate``, there ``sample_with_solver``
  (method euler, step size 0.1).

Options of this project: ``fp32`` (as shipped on a CPU), ``bf16`` (``--network_def#autocast_dtype bfloat16``),
``channels_last`` (``--channels_last true``), ``compile`` (``--compile true``; minutes of compilation on a CPU).
Options of the reference: ``fp32`` and ``bf16`` (its Lightning ``precision: bf16-mixed``; autocast for forward,
bare step and sampling).

Each round measures every code and option in turn, the order reversed every other round, so that all share the
machine's load; ratios (this project / the reference) are taken per round and of the medians, from wall seconds and
from this process's CPU seconds (steadier when other processes share the machine). On a machine shared with other
jobs, set ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin for each other lose their cores to the other jobs.
Every run records the phases of this project's trainer iteration; ``--profile`` adds torch.profiler's top operators
of one bare step of each.

The reference runs from its source folder (``--reference``, e.g. a clone of its repository), with its dependencies
importable (monai-generative 0.2.3, flow_matching 1.0.10, pytorch-lightning; e.g. installed with ``pip install
--no-deps --target DIR`` and ``PYTHONPATH=DIR``). Nothing of it is copied here. Without ``--reference`` only this
project is measured.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fire
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from records import ROOT, cli_list, machine, save, workflow

from scripts.batches import conditions
from scripts.data import input_transforms, load_batch, load_cases, percentile_range
from scripts.sampler import FlowSampler

# the reference's network configuration, as bundle config overrides
NETWORK = {
    "unet#channels": [32, 64, 128],
    "unet#attention_levels": [False, False, True],
    "unet#num_res_blocks": 1,
    "unet#num_head_channels": 32,
    "unet#norm_num_groups": 16,
}
OPTIONS = {
    "fp32": {},
    "bf16": {"network_def#autocast_dtype": "bfloat16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}
REFERENCE_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}
NUM_LABELS, NUM_CLASSES, NFE, SIZE = 4, 3, 10, (64, 64)
MEASURES = ("forward", "step", "bare_step", "sampling")
PHASES = ("data", "prepare_batch", "forward", "loss", "backward", "optimizer", "decollate", "handlers")


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, this process's CPU) seconds of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def top_operators(fn: Callable[[], object], rows: int = 15) -> list[dict]:
    """torch.profiler's operators of one call of ``fn`` with the most self CPU time: name, calls, self ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [
        {"operator": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 2)} for e in events[:rows]
    ]


def spread(cases: list[dict], n: int) -> list[dict]:
    """``n`` cases evenly spread over ``cases``."""
    picks = np.linspace(0, len(cases) - 1, min(n, len(cases))).round().astype(int)
    return [cases[i] for i in sorted(set(picks))]


def write_data(folder: Path, datalist: str, dataset_dir: str, n: int, batch_size: int) -> tuple[str, str]:
    """The shared data: a datalist of ``n`` training cases (its first batch also the validation split) and the same
    slices, on the model's grid and intensity range, as the reference's pickle ({"train", "valid"}: lists of
    {"image", "mask", "class", "name"}). Returns (datalist path, pickle path)."""
    cases = spread(load_cases(datalist, "training", dataset_dir, True, NUM_CLASSES), n)
    plain = [{k: c[k] for k in ("image", "label", "class")} for c in cases]
    listed = folder / "datalist.json"
    listed.write_text(json.dumps({"training": plain, "validation": plain[:batch_size], "test": plain[:batch_size]}))
    transforms = input_transforms(list(SIZE), NUM_LABELS, percentile_range(cases))
    items = []
    for case in cases:
        d = transforms(case)
        items.append(
            {
                "image": np.asarray(d["image"][0], dtype=np.float32),
                "mask": np.asarray(d["label"][0], dtype=np.float32),
                "class": int(case["class"]),
                "name": case["id"],
            }
        )
    pickled = folder / "reference_data.pkl"
    pickled.write_bytes(pickle.dumps({"train": items, "valid": items[:batch_size]}))
    return str(listed), str(pickled)


class Ours:
    """This project through its bundle configs: ``train.json``'s trainer, network, prepare-batch and optimizer
    with the reference's network sizes and an option's overrides; the inference sampler.

    Args:
        option: a key of ``OPTIONS``.
        folder: the run's output folder.
        datalist: the shared datalist; network: more config overrides (e.g. a smaller network in tests).
    """

    def __init__(self, option: str, folder: Path, datalist: str, batch_size: int, network: dict) -> None:
        overrides = {
            **NETWORK,
            **network,
            **OPTIONS[option],
            "datalist": datalist,
            "output_dir": str(folder),
            "batch_size": batch_size,
            "preview_interval": 10**6,
            "checkpoint_interval": 10**6,
            "train#trainer#max_epochs": 10**6,
        }
        parser = workflow(["train.json"], **overrides).parser
        self.trainer = parser.get_parsed_content("train#trainer")
        self.network = parser.get_parsed_content("network")
        self.optimizer = parser.get_parsed_content("optimizer")
        self.prepare = parser.get_parsed_content("train#prepare_batch")
        self.device = parser.get_parsed_content("device")
        self.model = torch.compile(self.network) if option == "compile" else self.network
        cases = parser.get_parsed_content("train#cases")[:batch_size]
        transforms = input_transforms(list(SIZE), NUM_LABELS, parser.get_parsed_content("train#intensity_range"))
        self.batch = load_batch(cases, transforms)
        self.cond = conditions(self.batch, True, NUM_CLASSES, self.device)
        self.x = torch.randn(len(cases), 1, *SIZE, device=self.device)
        self.timesteps = torch.rand(len(cases), device=self.device) * 1000
        self.sampler = FlowSampler("euler", NFE)
        self.parameters = sum(p.numel() for p in self.network.parameters())
        self._stamping()

    def _stamping(self) -> None:
        """Stamps every phase of the trainer's iterations and interrupts the run after ``self.limit`` of them."""
        self.stamps: list[dict] = []
        self.limit = 0  # iterations to run; 0 outside ``train`` (the bare step steps the same optimizer)

        def mark(name: str) -> Callable:
            def stamp(*_) -> None:
                if not self.limit:
                    return
                if name == "data_start":
                    self.stamps.append({})
                self.stamps[-1][name] = time.perf_counter()

            return stamp

        from monai.engines.utils import IterationEvents

        events = {
            "data_start": Events.GET_BATCH_STARTED,
            "data_end": Events.GET_BATCH_COMPLETED,
            "start": Events.ITERATION_STARTED,
            "forward": IterationEvents.FORWARD_COMPLETED,
            "loss": IterationEvents.LOSS_COMPLETED,
            "backward": IterationEvents.BACKWARD_COMPLETED,
            "model": IterationEvents.MODEL_COMPLETED,
        }
        for name, event in events.items():
            self.trainer.add_event_handler(event, mark(name))
        self.optimizer.register_step_pre_hook(mark("optimizer_start"))
        self.optimizer.register_step_post_hook(mark("optimizer_end"))
        prepare = self.trainer.prepare_batch

        def prepare_stamped(*args, **kwargs):
            out = prepare(*args, **kwargs)
            mark("prepared")()
            return out

        self.trainer.prepare_batch = prepare_stamped

        def end(engine) -> None:
            if not self.limit:
                return
            self.stamps[-1]["end"], self.stamps[-1]["end_cpu"] = time.perf_counter(), time.process_time()
            if len(self.stamps) >= self.limit:
                engine.interrupt()

        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, end)

    def close(self) -> None:
        """Ends the interrupted training run (its end-of-run handlers run)."""
        self.trainer.terminate()
        self.trainer.run()

    def forward(self) -> None:
        self.network.eval()
        with torch.no_grad():
            self.model(self.x, self.timesteps, **self.cond)

    def bare_step(self) -> None:
        x_t, target, _, kwargs = self.prepare(self.batch, self.device)
        loss = F.mse_loss(self.trainer.network(x_t, **kwargs), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sample(self) -> int:
        self.network.eval()
        return self.sampler.generate(self.model, self.batch, [1, *SIZE], 0, self.device)[1]

    def train(self, steps: int) -> tuple[list[tuple[float, float]], dict[str, list[float]]]:
        """Runs ``steps + 1`` trainer iterations (resuming the same run); returns the (wall, CPU) seconds of the
        last ``steps`` (end to end) and each one's phases."""
        self.stamps, self.limit = [], steps + 1
        self.trainer.run()
        s, self.limit = self.stamps, 0
        seconds = [(b["end"] - a["end"], b["end_cpu"] - a["end_cpu"]) for a, b in zip(s, s[1:])]
        bounds = {
            "data": ("data_start", "data_end"),
            "prepare_batch": ("start", "prepared"),
            "forward": ("prepared", "forward"),
            "loss": ("forward", "loss"),
            "backward": ("loss", "backward"),
            "optimizer": ("optimizer_start", "optimizer_end"),
            "decollate": ("optimizer_end", "model"),
            "handlers": ("model", "end"),
        }
        phases = {p: [i[b] - i[a] for i in s[1:]] for p, (a, b) in bounds.items()}
        return seconds, phases


class Reference:
    """The reference code, imported from its source folder: its Lightning module and data module for training, its
    model for the forward and bare step, ``sample_with_solver`` for sampling.

    Args:
        path: the reference's source folder; option: a key of ``REFERENCE_PRECISION``.
        data: its pickle (see ``write_data``); folder: where its logger writes.
    """

    def __init__(self, path: str, option: str, data: str, folder: Path, batch_size: int, lr: float) -> None:
        if path not in sys.path:
            sys.path.insert(0, path)
        for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        from trainer import FlowMatchingDataModule, FlowMatchingLightningModule
        from utils.utils_fm import sample_with_solver

        self.sample_with_solver, self.option, self.folder = sample_with_solver, option, folder
        self.config = {
            "model_args": {
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 1,
                "num_res_blocks": NETWORK["unet#num_res_blocks"],
                "num_channels": NETWORK["unet#channels"],
                "attention_levels": NETWORK["unet#attention_levels"],
                "norm_num_groups": NETWORK["unet#norm_num_groups"],
                "num_head_channels": NETWORK["unet#num_head_channels"],
                "with_conditioning": True,
                "cross_attention_dim": NUM_CLASSES,
                "mask_conditioning": True,
                "conditioning_embedding_num_channels": [16],
            },
            "data_args": {"pickle_path": data, "split_train": "train", "split_val": "valid"},
            "train_args": {"batch_size": batch_size, "lr": lr, "num_workers": 0},
            "solver_args": {"method": "euler", "step_size": 1.0 / NFE, "time_points": NFE},
        }
        self.module = FlowMatchingLightningModule(self.config)
        self.data = FlowMatchingDataModule(self.config)
        self.data.setup("fit")
        self.batch = next(iter(self.data.val_dataloader()))
        self.model = self.module.model
        self.optimizer = self.module.configure_optimizers()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.calls = 0
        self.model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        images = self.batch["images"]
        self.x, self.t = torch.randn_like(images), torch.rand(len(images))

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.option == "bf16")

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad(), self.autocast():
            self.model(x=self.x, t=self.t, cond=self.batch["classes"], masks=self.batch["masks"])

    def bare_step(self) -> None:
        self.model.train()
        with self.autocast():
            loss = self.module._compute_loss(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sample(self) -> int:
        self.model.eval()
        self.calls = 0
        with torch.no_grad(), self.autocast():
            self.sample_with_solver(
                self.model,
                torch.randn_like(self.batch["images"]),
                self.config["solver_args"],
                cond=self.batch["classes"].unsqueeze(1),
                masks=self.batch["masks"],
            )
        return self.calls

    def train(self, steps: int) -> tuple[list[tuple[float, float]], dict]:
        """Fits ``steps + 1`` steps with its own loop; returns the (wall, CPU) seconds of the last ``steps``."""
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import LearningRateMonitor
        from pytorch_lightning.loggers import TensorBoardLogger

        stamps = []

        class Stamp(pl.Callback):
            def on_train_batch_end(self, *_) -> None:
                stamps.append((time.perf_counter(), time.process_time()))

        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision=REFERENCE_PRECISION[self.option],
            max_steps=steps + 1,
            accumulate_grad_batches=1,
            logger=TensorBoardLogger(save_dir=str(self.folder), name="reference"),
            callbacks=[LearningRateMonitor(logging_interval="step"), Stamp()],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            log_every_n_steps=50,
        )
        trainer.fit(self.module, datamodule=self.data)
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])], {}


def reference_commit(path: str) -> str | None:
    """The reference folder's git commit, when it is a clone."""
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() or None


def ratios(rows: dict, options: list[str], reference_options: list[str]) -> dict:
    """Per measure: this project's option / the reference's option (each of ours against the reference's fp32,
    and against the same option where the reference has it): per round and of the medians, wall and CPU."""
    out: dict = {}
    for measure in MEASURES:
        for ours in options:
            for ref in dict.fromkeys(["fp32", ours]):
                if ref not in reference_options:
                    continue
                a, b = rows[f"ours {ours}"][measure], rows[f"reference {ref}"][measure]
                out.setdefault(measure, {})[f"ours {ours} / reference {ref}"] = {
                    "per_round": [round(x / y, 3) for x, y in zip(a["wall"], b["wall"])],
                    "of_medians": round(a["median"] / b["median"], 3),
                    "cpu_of_medians": round(a["cpu_median"] / b["cpu_median"], 3),
                }
    return out


def main(
    reference: str | None = None,
    options: str | tuple = "fp32,bf16",
    reference_options: str | tuple = "fp32,bf16",
    rounds: int = 3,
    steps: int = 4,
    threads: int = 2,
    cases: int = 64,
    batch_size: int = 8,
    profile: bool = False,
    note: str = "",
    network: str = "{}",
    datalist: str = str(ROOT / "bundle" / "data" / "datalist_2d.json"),
    dataset_dir: str = str(ROOT / "bundle" / "data"),
    out: str = "results/reference_compare.json",
) -> dict:
    """Measures both codes (see the module docstring); prints and saves the record.

    Args:
        reference: the reference's source folder (None: this project only).
        options, reference_options: comma-separated options of each code (``OPTIONS``, ``REFERENCE_PRECISION``).
        rounds: alternating rounds; steps: timed training steps per code, option and round (after one untimed).
        threads: torch threads; cases: training cases used; batch_size: images per batch.
        profile: add torch.profiler's top operators of one bare step of each code and option.
        note: what the record should say about the machine (e.g. other jobs running on it).
        network: JSON dict of extra bundle overrides for this project (tests use a smaller network).
    """
    start = time.perf_counter()
    torch.set_num_threads(threads)
    ours_options = cli_list(options)
    ref_options = cli_list(reference_options) if reference else []
    for o in ours_options:
        if o not in OPTIONS:
            raise ValueError(f"unknown option {o!r} (known: {list(OPTIONS)})")
    for o in ref_options:
        if o not in REFERENCE_PRECISION:
            raise ValueError(f"unknown reference option {o!r} (known: {list(REFERENCE_PRECISION)})")
    extra = json.loads(network) if isinstance(network, str) else dict(network)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="reference_compare-") as tmp:
        folder = Path(tmp)
        listed, pickled = write_data(folder, datalist, dataset_dir, cases, batch_size)
        codes = {f"ours {o}": Ours(o, folder / f"ours_{o}", listed, batch_size, extra) for o in ours_options}
        lr = float(codes[next(iter(codes))].optimizer.param_groups[0]["lr"])
        for o in ref_options:
            codes[f"reference {o}"] = Reference(reference, o, pickled, folder, batch_size, lr)
        results = {name: {m: [] for m in MEASURES} for name in codes}
        nfe, phases = {}, {name: {} for name in codes}
        for name, code in codes.items():  # warm-up: first calls, allocations, compilation
            code.forward()
            code.bare_step()
            nfe[name] = code.sample()
            if nfe[name] != NFE:
                raise ValueError(f"{name} sampled with {nfe[name]} network calls, not {NFE}")
        for r in range(rounds):
            for name, code in list(codes.items())[:: 1 if r % 2 == 0 else -1]:
                results[name]["forward"].append(timed(code.forward))
                for _ in range(steps):
                    results[name]["bare_step"].append(timed(code.bare_step))
                seconds, parts = code.train(steps)
                results[name]["step"] += seconds
                for p, values in parts.items():
                    phases[name].setdefault(p, []).extend(values)
                results[name]["sampling"].append(timed(code.sample))
                print(
                    f"round {r + 1}/{rounds} {name}: "
                    + ", ".join(f"{m} {results[name][m][-1][0]:.3f} s" for m in MEASURES)
                )
        profiles = {name: top_operators(code.bare_step) for name, code in codes.items()} if profile else None
        parameters = {name: code.parameters for name, code in codes.items()}
        for code in codes.values():
            if isinstance(code, Ours):
                code.close()
    rows = {}
    for name, measured in results.items():
        rows[name] = {}
        for measure, values in measured.items():
            per_round = len(values) // rounds  # steps per round for the step measures, else 1
            wall = [
                statistics.median(v[0] for v in values[i : i + per_round]) / batch_size
                for i in range(0, len(values), per_round)
            ]
            cpu = [
                statistics.median(v[1] for v in values[i : i + per_round]) / batch_size
                for i in range(0, len(values), per_round)
            ]
            rows[name][measure] = {
                "wall": [round(w, 4) for w in wall],
                "cpu": [round(c, 4) for c in cpu],
                "median": round(statistics.median(wall), 4),
                "cpu_median": round(statistics.median(cpu), 4),
            }
    record = {
        "command": " ".join(["python", "bench/reference_compare.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average": {"start": [round(v, 2) for v in load_before], "end": [round(v, 2) for v in os.getloadavg()]},
        "note": note,
        "settings": {
            "network": {**NETWORK, **extra},
            "image_size": list(SIZE),
            "batch_size": batch_size,
            "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "rounds": rounds,
            "steps": steps,
            "cases": cases,
            "nfe": nfe,
        },
        "reference": {"path": reference, "commit": reference_commit(reference)} if reference else None,
        "parameters": parameters,
        "unit": "seconds per image; per round the median of its calls; 'median' over rounds",
        "rows": rows,
        "ratios": ratios(rows, ours_options, ref_options),
        "trainer_phases_ms_per_image": {
            name: {p: round(statistics.median(v) / batch_size * 1e3, 2) for p, v in parts.items()}
            for name, parts in phases.items()
            if parts
        },
        "profile_bare_step": profiles,
        "seconds": round(time.perf_counter() - start, 1),
    }
    save(record, out)
    return record


if __name__ == "__main__":
    fire.Fire(main)
