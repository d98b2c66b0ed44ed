"""Training at scale, measured on this machine's device (CUDA if present, else CPU):

    python bench/scale.py throughput [--variants mask_class_2d,mask_3d] [--iterations 4] [--out results/scale]
    python bench/scale.py memory [--variants mask_3d,uncond_3d] [--gpu_gib 24,40,80,141] [--out results/scale]
    python bench/scale.py cpu [--variant mask_3d] [--sides 32,48,64] [--estimate_sides 128,256] [--out results/scale]

- throughput: images per second of one process, training (the bundle's train config: the second of two epochs of
  ``--iterations`` steps, data loading and handlers included) and generating (the inference config at 10 Euler
  NFE on the variant's test split: 1 / seconds_per_sample of info.json), with untrained weights of the bundle's
  architecture; writes ``scale_throughput.json`` and prints its table. Under torchrun each GPU runs one such
  process;
- memory: the largest cube side (a multiple of 16) that trains at batch 1, 2 and 4 with and without activation
  checkpointing, per GPU memory size. On CUDA it is measured: the peak ``torch.cuda.max_memory_allocated`` of two
  mixed-precision training steps (AdamW, EMA copy, channels-last), with the process limited to each size by
  ``torch.cuda.set_per_process_memory_fraction``. Without CUDA it is estimated for fp32 training: the bytes that
  autograd saves for the backward pass, counted on PyTorch's meta device (shapes only, no memory, no compute), plus
  the largest single block's saved bytes (recomputed in the backward pass with checkpointing; a stand-in for the
  backward pass's transient buffers without), plus 20 bytes per parameter (weights, gradients, two AdamW moments
  and the EMA copy), times 1.15 for allocator fragmentation and convolution workspaces, plus 0.5 GiB of CUDA
  context.
- cpu: the measured peak memory and time of fp32 training steps (AdamW, EMA copy) and of 10-NFE Euler sampling on
  the CPU at each cube side, beside the estimate above without its CUDA context: the check of the estimate where
  no GPU is lent, and its value at the larger sides that a CPU cannot train. Each measurement runs in a fresh
  (Linux) process: its peak resident memory, reset once the imports are done, over its resident memory before the
  network exists is the measured peak.

Each prints its result and writes it to ``<out>/scale_<name>.json``.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import fire
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from records import ROOT, cli_list, machine, publish, run_info, save
from tables import scale_throughput_table

from scripts.checkpoint import save_model
from scripts.sampler import FlowSampler

CONFIGS = ROOT / "bundle" / "configs"
DATA = ROOT / "bundle" / "data"

SIDES = range(32, 513, 16)
CUDA_CONTEXT_GIB = 0.5  # what a CUDA process holds before its first tensor, counted into every GPU peak


def _workflow(configs: list[str], **overrides) -> ConfigWorkflow:
    files = [str(CONFIGS / c) for c in configs]
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, logging_file=False, **overrides)
    workflow.initialize()
    return workflow


def throughput(
    variants: str = "mask_class_2d,mask_3d", iterations: int = 4, out: str = "results/scale", **overrides
) -> dict:
    """Training and generation images per second of one process, per variant (default image size and batch, the
    variant's data; ``overrides``: bundle config overrides). Writes ``<out>/scale_throughput.json``, prints
    its table; returns the record."""
    start = time.perf_counter()
    rows = []
    for variant in cli_list(variants):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            common = {"dataset_dir": str(DATA), **overrides}
            train = _workflow(
                ["train.json", f"variants/{variant}.json"],
                **common,
                output_dir=str(folder / "train"),
                preview_interval=10**6,
                checkpoint_interval=10**6,
                **{"train#trainer#max_epochs": 2, "train#trainer#epoch_length": iterations},
            )
            trainer = train.parser.get_parsed_content("train#trainer")
            train.run()
            parser = train.parser
            save_model(
                str(folder / "model.pt"),
                parser.get_parsed_content("network"),
                None,
                parser.get_parsed_content("card"),
            )
            generate = _workflow(
                ["inference.json", f"variants/{variant}.json"],
                **common,
                ckpt_path=str(folder / "model.pt"),
                output_dir=str(folder / "samples"),
                num_steps=10,
            )
            info = generate.run()[0]
            rows.append(
                {
                    "variant": variant,
                    "image_size": parser["image_size"],
                    "batch_size": parser["batch_size"],
                    "train_images_per_second": float(f"{trainer.state.metrics['images_per_second']:.3g}"),
                    "generate_images_per_second": float(f"{1 / info['seconds_per_sample']:.3g}"),
                    "generated": info["generated"],
                    "nfe": info["nfe"],
                    "device": info["device"],
                }
            )
    record = {**run_info("scale"), "benchmark": "scale_throughput", "iterations": iterations, "rows": rows}
    record["seconds"] = round(time.perf_counter() - start, 1)
    publish(record, out, scale_throughput_table)
    return record


def _network(variant: str, checkpointing: bool, device: str | torch.device):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / f"variants/{variant}.json")])
    parser.update({"activation_checkpointing": checkpointing})
    with torch.device(device):
        return parser.get_parsed_content("network_def")


def _inputs(network, batch: int, side: int, device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    shape = (batch, 1, side, side, side)
    cond = {"mask": torch.zeros(shape, dtype=torch.long, device=device)} if network.num_labels else {}
    if network.num_classes:
        cond["cls"] = torch.zeros(batch, dtype=torch.long, device=device)
    return torch.randn(shape, device=device), torch.full((batch,), 500.0, device=device), cond


def _saved(network, batch: int, side: int, blocks: list = ()) -> tuple[int, int]:
    """(bytes that autograd saves for the backward pass in one forward, the most that one of ``blocks`` saves)."""
    saved, starts, most = 0, {}, 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    def leave(module, args, output) -> None:
        nonlocal most
        most = max(most, saved - starts[module])

    for b in blocks:
        b.register_forward_pre_hook(lambda module, args: starts.__setitem__(module, saved))
        b.register_forward_hook(leave)
    x, t, cond = _inputs(network, batch, side, "meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        network(x, t, **cond)
    return saved, most


def estimated_gib(variant: str, side: int, batch: int, checkpointing: bool) -> float:
    """The estimated peak GiB of fp32 training (see the module docstring), from the meta device."""
    plain = _network(variant, False, "meta")
    saved, block = _saved(plain, batch, side, [*plain.unet.down_blocks, plain.unet.middle_block, *plain.unet.up_blocks])
    if checkpointing:
        saved, _ = _saved(_network(variant, True, "meta"), batch, side)
    states = 20 * sum(p.numel() for p in plain.parameters())
    return 1.15 * (states + saved + block) / 2**30 + CUDA_CONTEXT_GIB


def measured_gib(variant: str, side: int, batch: int, checkpointing: bool) -> float | None:
    """The peak GiB that two mixed-precision training steps reserve on CUDA, plus 0.5 GiB of CUDA context; None if
    they run out of memory."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        network = _network(variant, checkpointing, "cuda").to(memory_format=torch.channels_last_3d)
        ema = [p.detach().clone() for p in network.parameters()]
        optimizer = torch.optim.AdamW(network.parameters())
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        x, t, cond = _inputs(network, batch, side, "cuda")
        for _ in range(2):
            with torch.autocast("cuda", dtype=dtype):
                loss = torch.nn.functional.mse_loss(network(x, t, **cond).float(), x)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            torch._foreach_lerp_(ema, [p.detach() for p in network.parameters()], 0.001)
        return torch.cuda.max_memory_reserved() / 2**30 + CUDA_CONTEXT_GIB
    except torch.cuda.OutOfMemoryError:
        return None


def memory(variants: str = "mask_3d,uncond_3d", gpu_gib: str = "24,40,80,141", out: str = "results/scale") -> None:
    """The largest cube side per GPU memory size, batch and checkpointing (measured on CUDA, else estimated)."""
    sizes = [float(s) for s in cli_list(gpu_gib)]
    cuda = torch.cuda.is_available()
    if cuda:  # only the sizes this GPU can stand for
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        sizes = [s for s in sizes if s <= total] or [total]
    peak_gib = measured_gib if cuda else estimated_gib
    rows = []
    for variant in cli_list(variants):
        for checkpointing in (False, True):
            for batch in (1, 2, 4):
                peaks = {}  # cube side -> GiB, up to the first side that needs more than the largest size
                for side in SIDES:
                    peaks[side] = peak_gib(variant, side, batch, checkpointing)
                    if peaks[side] is None or peaks[side] > max(sizes):
                        break
                largest = {f"{g:g}": max((s for s, p in peaks.items() if p and p <= g), default=None) for g in sizes}
                rows.append(
                    {"variant": variant, "checkpointing": checkpointing, "batch": batch, "largest_side": largest}
                )
                rows[-1]["peak_gib"] = {s: round(p, 2) for s, p in peaks.items() if p}
    method = "measured (mixed precision)" if cuda else "estimated (fp32, meta device)"
    header = "| variant | checkpointing | batch | " + " | ".join(f"{g:g} GiB" for g in sizes) + " |"
    lines = [f"{method}, {machine()}", "", header, "|---|---|---|" + "---|" * len(sizes)]
    lines += [
        f"| {r['variant']} | {'yes' if r['checkpointing'] else 'no'} | {r['batch']} | "
        + " | ".join(f"{v}³" if v else "-" for v in r["largest_side"].values())
        + " |"
        for r in rows
    ]
    print("\n".join(lines))
    save(
        {**run_info("scale"), "benchmark": "scale_memory", "method": method, "rows": rows},
        str(Path(out) / "scale_memory.json"),
    )


def _status_gib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its peak), in GiB."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20


def _cpu_measure(variant: str, side: int, batch: int, mode: str, repeats: int) -> dict:
    """In a fresh process: the peak GiB over the process's before the network exists, and the seconds of one
    training step (``mode="train"``: fp32 AdamW + EMA copy, the first of ``repeats + 1`` steps not timed) or of one
    10-step Euler sampling of the batch (``mode="sample"``, the fastest of ``repeats``)."""
    torch.manual_seed(0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (imports) forgotten: VmHWM = VmRSS from here
    base = _status_gib("VmRSS")
    network = _network(variant, False, "cpu")
    x, t, cond = _inputs(network, batch, side, "cpu")
    seconds = []
    if mode == "train":
        ema = [p.detach().clone() for p in network.parameters()]
        optimizer = torch.optim.AdamW(network.parameters())
        for _ in range(repeats + 1):
            start = time.perf_counter()
            torch.nn.functional.mse_loss(network(x, t, **cond), x).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch._foreach_lerp_(ema, [p.detach() for p in network.parameters()], 0.001)
            seconds.append(time.perf_counter() - start)
        seconds = seconds[1:]
    else:
        network.eval()
        sampler = FlowSampler("euler", num_steps=10)
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.inference_mode():
                sampler(network, torch.randn_like(x), cond)
            seconds.append(time.perf_counter() - start)
    return {"peak_gib": round(_status_gib("VmHWM") - base, 3), "seconds": round(min(seconds), 3)}


def cpu(
    variant: str = "mask_3d",
    sides: str | Sequence[int] = "32,48,64",
    estimate_sides: str | Sequence[int] = "128,256",
    batch: int = 1,
    repeats: int = 2,
    out: str = "results/scale",
) -> dict:
    """Measured CPU peak memory and seconds, training and sampling, per cube side, beside ``estimated_gib`` without
    its CUDA context; ``estimate_sides`` get the estimate alone. Writes ``<out>/scale_cpu.json``; returns it."""
    start = time.perf_counter()
    context = get_context("spawn")  # a fresh process per measurement: its peak memory is that measurement's
    rows = []
    measured = [int(s) for s in cli_list(sides)]
    for side in measured + [int(s) for s in cli_list(estimate_sides)]:
        row = {"side": side, "estimated_gib": round(estimated_gib(variant, side, batch, False) - CUDA_CONTEXT_GIB, 3)}
        if side in measured:
            for mode in ("train", "sample"):
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    result = pool.submit(_cpu_measure, variant, side, batch, mode, repeats).result()
                row[f"{mode}_gib"], row[f"{mode}_seconds"] = result["peak_gib"], result["seconds"]
            row["estimate_over_measured"] = round(row["estimated_gib"] / row["train_gib"], 2)
        rows.append(row)
    record = {**run_info("scale"), "variant": variant, "batch": batch, "precision": "fp32", "rows": rows}
    record["seconds"] = round(time.perf_counter() - start, 1)
    save(record, str(Path(out) / "scale_cpu.json"))
    return record


if __name__ == "__main__":
    fire.Fire({"throughput": throughput, "memory": memory, "cpu": cpu})
