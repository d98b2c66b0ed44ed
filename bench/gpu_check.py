"""What a GPU changes, measured in one prepared run: one JSON record and a Markdown table (``gpu_check.json`` and
``gpu_check.md`` in ``--out_dir``). Every section has its own time box and its own failure (recorded, and the next
section runs); the whole run has a global deadline counted from the script's start (450 s: with start-up it ends
within 8 minutes on one GPU). The record is rewritten after every section, so a run killed midway keeps what it had.

    python bench/gpu_check.py --out_dir bundle/docs/records     # on a CUDA machine
    python bench/gpu_check.py --smoke --out_dir /tmp/gpu_check  # the same code at tiny sizes on a CPU (the test)

Sections (``--sections`` picks some):

- network_2d: the paper-size 2D mask + class network (the reference's widths 32/64/128/224/256, two residual blocks a
  level, attention at the last two levels) at 256 x 256, batch 16: forward and training step (AdamW) in fp32, bf16
  autocast, bf16 + channels-last, and bf16 + channels-last + torch.compile; images/s; FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the network (forward, and forward + backward), the TFLOP/s they make
  and their fraction of the GPU's peak bf16 throughput: measured (a large bf16 matmul) and NVIDIA's dense datasheet
  figure where the GPU's name is known;
- sampling: milliseconds per image at 1, 2 and 10 NFE (Euler), batch 1 and 32, through the bundle's ``FlowSampler``,
  fp32 and bf16 (``ConditionalUNet(autocast_dtype="bfloat16")``), channels-last;
- memory_3d: the 3D mask network of ``variants/mask_3d.json``, batch 1: training step time and
  ``torch.cuda.max_memory_allocated`` in fp32 at 64^3 and 128^3 beside ``bench/scale.py``'s estimate (fp32, counted
  on the meta device), with and without activation checkpointing; then the largest cube (a multiple of 16) that
  trains in bf16 with channels-last, with and without checkpointing;
- ddp: ``torchrun`` over the GPUs present (NCCL; gloo on a CPU), the shipped network for a few AdamW steps on one
  global batch split over the ranks: the losses must match one process's on the whole batch;
- training: the bundle's ``train.json`` at 256 x 256 on the bundle's data (a small subject set is built when
  bundle/data is missing) for a short run: the loss must fall;
- deploy: ``bench/deploy_latency.py``: the deploy app end to end on a 20-plane SEG study against the model alone.

``--smoke`` runs every section at tiny sizes on the CPU, compiling with the "eager" backend (tracing only).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # start-up (imports, CUDA) counts against the deadline

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import fire  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from records import ROOT, cli_list, machine, workflow  # noqa: E402
from tables import gpu_check_table  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from scripts.flow import FlowPath  # noqa: E402
from scripts.networks import ConditionalUNet  # noqa: E402
from scripts.sampler import FlowSampler  # noqa: E402

SECTIONS = ("network_2d", "sampling", "memory_3d", "ddp", "training", "deploy")
PAPER_2D = {
    "channels": (32, 64, 128, 224, 256),
    "attention_levels": (False, False, False, True, True),
    "num_res_blocks": 2,
    "num_head_channels": 32,
    "norm_num_groups": 32,
}
TINY_2D = {"channels": (8, 16), "attention_levels": (False, True), "num_head_channels": 8, "norm_num_groups": 4}
TINY_UNET = {"unet#channels": [8, 16], "unet#attention_levels": [False, True], "unet#num_head_channels": 8}
TINY_UNET["unet#norm_num_groups"] = 4
# NVIDIA datasheet dense BF16 tensor-core TFLOP/s (without sparsity), by name fragments (first match wins)
SPEC_BF16_TFLOPS = (
    (("H200", "NVL"), 835.5),
    (("H200",), 989.5),
    (("H100", "NVL"), 835.5),
    (("H100", "PCIe"), 756.5),
    (("H100",), 989.5),
    (("A100",), 312.0),
    (("L40S",), 362.1),
)
CONDITIONS = {"num_classes": 3, "num_labels": 4}


@dataclass
class Sizes:
    """The sizes of a run: the GPU run's by default, ``smoke()``'s on a CPU."""

    network_2d: dict = field(default_factory=lambda: dict(PAPER_2D))
    image_2d: int = 256
    batch_2d: int = 16
    repeats: int = 5
    matmul: int = 8192
    sample_batches: tuple = (1, 32)
    nfe: tuple = (1, 2, 10)
    sides_3d: tuple = (64, 128)
    side_step_3d: int = 64
    max_side_3d: int = 512
    network_3d: dict = field(default_factory=dict)  # ConditionalUNet arguments; empty: variants/mask_3d.json's
    ddp_batch: int = 8
    ddp_image: int = 64
    ddp_steps: int = 5
    ddp_network: dict = field(default_factory=dict)
    train_image: int = 256
    train_cases: int = 128
    train_iterations: int = 120
    train_overrides: dict = field(default_factory=dict)
    deploy_repeats: int = 3
    deploy_tiny: bool = False  # a tiny network instead of the shipped model
    compile_backend: str = "inductor"
    boxes: dict = field(
        default_factory=lambda: {
            "network_2d": 190,
            "sampling": 40,
            "memory_3d": 70,
            "ddp": 40,
            "training": 45,
            "deploy": 40,
        }
    )

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            network_2d=dict(TINY_2D),
            image_2d=32,
            batch_2d=2,
            repeats=1,
            matmul=256,
            sample_batches=(1, 2),
            sides_3d=(8, 16),
            side_step_3d=8,
            max_side_3d=24,
            network_3d={**TINY_2D, "attention_levels": (False, False), "num_labels": 4},
            ddp_batch=2,
            ddp_image=16,
            ddp_steps=3,
            ddp_network=dict(TINY_2D),
            train_image=32,
            train_cases=16,
            train_iterations=24,
            train_overrides={**TINY_UNET, "lr": 2e-3},
            deploy_repeats=1,
            deploy_tiny=True,
            compile_backend="eager",
            boxes=dict.fromkeys(SECTIONS, 90),
        )


class SectionTimeout(Exception):
    """A section ran past its time box."""


@contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raises ``SectionTimeout`` in the main thread after ``seconds`` (SIGALRM; raised when Python code runs next)."""

    def alarm(*_) -> None:
        raise SectionTimeout(f"time box of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in GiB (None on a CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (the device synchronised around each)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def inputs_2d(batch: int, side: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Images (B, 1, side, side), timesteps (B,) and mask + class conditions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, side, side, generator=g)
    t = FlowPath.timesteps(torch.rand(batch, generator=g))
    cond = {"mask": torch.randint(0, 4, (batch, 1, side, side), generator=g), "cls": torch.randint(0, 3, (batch,))}
    return x.to(device), t.to(device), {k: v.to(device) for k, v in cond.items()}


def peak_bf16(device: torch.device, n: int) -> dict:
    """The device's bf16 matmul throughput, measured on (n x n) @ (n x n), and the datasheet figure if known."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    reps = 10
    s = seconds(lambda: [a @ b for _ in range(reps)], device, 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    spec = next((v for keys, v in SPEC_BF16_TFLOPS if all(k in name for k in keys)), None)
    return {"measured_matmul_tflops": round(2 * n**3 * reps / s / 1e12, 2), "spec_tflops": spec, "device_name": name}


def network_2d(result: dict, sizes: Sizes, device: torch.device) -> None:
    torch.manual_seed(0)
    net = ConditionalUNet(2, **sizes.network_2d, **CONDITIONS).to(device)
    b, side = sizes.batch_2d, sizes.image_2d
    x, t, cond = inputs_2d(b, side, device)
    target = torch.randn_like(x)
    result.update(parameters=sum(p.numel() for p in net.parameters()), batch=b, image_size=[side, side])
    with FlopCounterMode(display=False) as forward_flops, torch.no_grad():
        net(x, t, **cond)
    with FlopCounterMode(display=False) as step_flops:
        F.mse_loss(net(x, t, **cond), target).backward()
    net.zero_grad(set_to_none=True)
    flops = {"forward": forward_flops.get_total_flops(), "training_step": step_flops.get_total_flops()}
    result["flops_per_image"] = {k: v / b for k, v in flops.items()}
    result["peak"] = peak = peak_bf16(device, sizes.matmul)
    result["variants"] = {}
    variants = {  # name: (autocast dtype, channels-last, compiled)
        "fp32": (None, False, False),
        "bf16": (torch.bfloat16, False, False),
        "bf16 channels-last": (torch.bfloat16, True, False),
        "bf16 channels-last compile": (torch.bfloat16, True, True),
    }
    for name, (dtype, channels_last, compiled) in variants.items():
        row = time_variant(net, (x, t, cond, target), dtype, channels_last, compiled, sizes, device)
        step_tflops = flops["training_step"] / row["step_ms"] / 1e9
        row.update(  # three significant digits: a tiny network on a loaded CPU still shows its share
            forward_tflops=float(f"{flops['forward'] / row['forward_ms'] / 1e9:.3g}"),
            step_tflops=float(f"{step_tflops:.3g}"),
        )
        for source, key in (("measured", "measured_matmul_tflops"), ("spec", "spec_tflops")):
            if peak[key]:
                row[f"step_fraction_of_{source}_peak"] = float(f"{step_tflops / peak[key]:.3g}")
        result["variants"][name] = row


def training_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple,
    device: torch.device,
    dtype: torch.dtype | None,
) -> None:
    """One MSE training step of ``network`` on ``data`` = (x, timesteps, conditions, target), under
    ``autocast(device, dtype)``."""
    x, t, cond, target = data
    with autocast(device, dtype):
        loss = F.mse_loss(network(x, t, **cond).float(), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_variant(
    net: torch.nn.Module,
    data: tuple,
    dtype: torch.dtype | None,
    channels_last: bool,
    compiled: bool,
    sizes: Sizes,
    device: torch.device,
) -> dict:
    """Forward and training step (AdamW) of ``net`` on ``data`` = (x, timesteps, conditions, target): the first
    calls' seconds (compilation included), then median ms, images/s and peak memory."""
    x, t, cond, target = data
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = net.to(memory_format=layout)
    run = torch.compile(model, backend=sizes.compile_backend) if compiled else model
    x = x.contiguous(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def forward() -> None:
        with torch.no_grad(), autocast(device, dtype):
            run(x, t, **cond)

    step = partial(training_step, run, optimizer, (x, t, cond, target), device, dtype)

    reset_memory(device)
    first = time.perf_counter()
    forward()
    step()
    sync(device)
    first = time.perf_counter() - first
    forward_s, step_s = seconds(forward, device, sizes.repeats), seconds(step, device, sizes.repeats)
    return {
        "first_calls_s": round(first, 2),
        "forward_ms": round(forward_s * 1e3, 2),
        "step_ms": round(step_s * 1e3, 2),
        "forward_images_per_s": round(len(x) / forward_s, 1),
        "training_images_per_s": round(len(x) / step_s, 1),
        "peak_memory_gib": peak_gib(device),
    }


def sampling(result: dict, sizes: Sizes, device: torch.device) -> None:
    torch.manual_seed(0)
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    net = ConditionalUNet(2, **sizes.network_2d, **CONDITIONS).to(device, memory_format=layout).eval()
    shape = [1, sizes.image_2d, sizes.image_2d]
    result["rows"] = rows = []
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        net.autocast_dtype = dtype
        for b in sizes.sample_batches:
            _, _, cond = inputs_2d(b, sizes.image_2d, device)
            batch = {"index": torch.arange(b), "label": cond["mask"], "class": cond["cls"]}
            for nfe in sizes.nfe:
                sampler = FlowSampler("euler", nfe)
                generate = partial(sampler.generate, net, batch, shape, 0, device)
                generate()  # warm-up
                s = seconds(generate, device, sizes.repeats)
                rows.append({"precision": precision, "batch": b, "nfe": nfe, "ms_per_image": round(s / b * 1e3, 3)})


def memory_3d(result: dict, sizes: Sizes, device: torch.device, box: float) -> None:
    from scale import _inputs, _network, estimated_gib

    end = time.perf_counter() + box - 5  # the largest-cube search stops by itself before the time box

    def trial(side: int, checkpointing: bool, dtype: torch.dtype | None) -> dict:
        """Two training steps at batch 1: the second's time and the peak memory; {"fits": False} on OOM."""
        reset_memory(device)
        try:
            layout = torch.preserve_format if dtype is None else torch.channels_last_3d
            net = (
                ConditionalUNet(3, **sizes.network_3d, activation_checkpointing=checkpointing).to(device)
                if sizes.network_3d
                else _network("mask_3d", checkpointing, device)
            ).to(memory_format=layout)
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)
            x, t, cond = _inputs(net, 1, side, device)
            x = x.contiguous(memory_format=layout)

            step = partial(training_step, net, optimizer, (x, t, cond, x), device, dtype)

            step()
            return {
                "fits": True,
                "step_ms": round(seconds(step, device, 1) * 1e3, 1),
                "allocated_gib": peak_gib(device),
            }
        except torch.cuda.OutOfMemoryError:
            return {"fits": False}
        finally:
            reset_memory(device)

    result["measured"] = measured = []
    for checkpointing in (False, True):
        for side in sizes.sides_3d:
            row = {
                "side": side,
                "checkpointing": checkpointing,
                "precision": "fp32",
                **trial(side, checkpointing, None),
            }
            row["estimate_gib"] = round(estimated_gib("mask_3d", side, 1, checkpointing), 3)
            if row.get("allocated_gib"):
                row["estimate_over_allocated"] = round(row["estimate_gib"] / row["allocated_gib"], 3)
            measured.append(row)
    result["largest_bf16"] = largest = {}
    for passes_left, checkpointing in ((2, False), (1, True)):  # up by side_step, then by a quarter of it
        key = "with checkpointing" if checkpointing else "without checkpointing"
        step = sizes.side_step_3d
        fits = max(sizes.sides_3d)
        side = fits + step
        largest[key] = {"side": fits, "tried": [], "stopped_for_time": False}
        stop = time.perf_counter() + (end - time.perf_counter()) / passes_left
        while side <= sizes.max_side_3d and step >= min(16, sizes.side_step_3d):
            if time.perf_counter() > stop:
                largest[key]["stopped_for_time"] = True
                break
            outcome = trial(side, checkpointing, torch.bfloat16)
            largest[key]["tried"].append({"side": side, **outcome})
            if outcome["fits"]:
                fits = largest[key]["side"] = side
                side += step
            else:
                step //= 4
                side = fits + step
        largest[key]["capped"] = side > sizes.max_side_3d


def ddp_losses(sizes: Sizes, device: torch.device, global_batch: int) -> list[float]:
    """Loss per AdamW step of the shipped network on seeded global batches of ``global_batch`` images; under
    torch.distributed each rank takes its slice and the network is wrapped in DistributedDataParallel, and the
    loss is the mean over ranks (the whole batch's)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    net = ConditionalUNet(2, **sizes.ddp_network, **CONDITIONS).to(device)
    model = (
        torch.nn.parallel.DistributedDataParallel(net, [device] if device.type == "cuda" else None)
        if distributed
        else net
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    mine = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    losses = []
    for _ in range(sizes.ddp_steps):
        shape = (global_batch, 1, sizes.ddp_image, sizes.ddp_image)
        x1, x0 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.rand(global_batch, generator=g)
        mask, cls = torch.randint(0, 4, shape, generator=g), torch.randint(0, 3, (global_batch,), generator=g)
        x_t, target = FlowPath.interpolate(x0, x1, t)[mine].to(device), FlowPath.target(x0, x1)[mine].to(device)
        out = model(x_t, FlowPath.timesteps(t)[mine].to(device), mask=mask[mine].to(device), cls=cls[mine].to(device))
        loss = F.mse_loss(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.detach().clone()
        if distributed:
            dist.all_reduce(value)
            value /= world
        losses.append(float(value))
    return losses


@contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions inside, so that DDP and one process can be compared closely."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def ddp_worker(out: str, smoke: bool) -> None:
    """One torchrun rank of the ddp section: writes (rank 0) the world size, backend and losses to ``out``."""
    cuda = torch.cuda.is_available() and not smoke
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    sizes = Sizes.smoke() if smoke else Sizes()
    global_batch = sizes.ddp_batch * dist.get_world_size()
    with no_tf32():
        losses = ddp_losses(sizes, device, global_batch)
    if dist.get_rank() == 0:
        info = {"world_size": dist.get_world_size(), "backend": backend, "global_batch": global_batch}
        Path(out).write_text(json.dumps({**info, "losses": losses}))
    dist.destroy_process_group()


def ddp(result: dict, sizes: Sizes, device: torch.device, smoke: bool, box: float) -> None:
    n = torch.cuda.device_count() if device.type == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        command += [str(Path(__file__).resolve()), "--worker", str(out)] + (["--smoke"] if smoke else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(box - 15, 10), env=env)
        if done.returncode:
            raise RuntimeError(f"torchrun exited with {done.returncode}: {done.stderr[-1500:]}")
        result.update(json.loads(out.read_text()))
    with no_tf32():
        single = ddp_losses(sizes, device, result["global_batch"])
    diff = max(abs(a - b) / abs(b) for a, b in zip(result["losses"], single))
    result.update(single_process_losses=single, max_relative_difference=diff, tolerance=1e-3, matches=diff < 1e-3)


def training(result: dict, sizes: Sizes, device: torch.device, data_dir: str) -> None:
    from ignite.engine import Events
    from monai.handlers import from_engine
    from reference_compare import spread

    from scripts.data import load_cases
    from scripts.synthetic_subjects import build

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(data_dir)
        if not (data / "datalist_2d.json").is_file():
            data = Path(build(str(Path(tmp) / "data"), subjects=(2, 1, 1)))
            result["data"] = "built: 2 training subjects"
        cases = load_cases(str(data / "datalist_2d.json"), "training", str(data), True, CONDITIONS["num_classes"])
        plain = [{k: c[k] for k in ("image", "label", "class")} for c in spread(cases, sizes.train_cases)]
        listed = Path(tmp) / "datalist.json"
        listed.write_text(json.dumps({"training": plain, "validation": plain[:8]}))
        overrides = {
            "datalist": str(listed),
            "dataset_dir": str(data),
            "image_size": [sizes.train_image] * 2,
            "output_dir": str(Path(tmp) / "train"),
            "preview_interval": 10**6,
            "checkpoint_interval": 10**6,
            "train#trainer#max_epochs": 10**6,
            **sizes.train_overrides,
        }
        parser = workflow(["train.json"], **overrides).parser
        trainer = parser.get_parsed_content("train#trainer")
        losses, stamps = [], []

        def record(engine) -> None:
            losses.append(float(from_engine(["loss"], first=True)(engine.state.output)))
            stamps.append(time.perf_counter())
            if len(losses) >= sizes.train_iterations:
                engine.terminate()

        trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
        trainer.run()
    k = max(len(losses) // 6, 1)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    batch = parser["batch_size"]
    result.update(
        iterations=len(losses),
        batch_size=batch,
        image_size=[sizes.train_image] * 2,
        amp=bool(parser.get_parsed_content("amp")),
        channels_last=bool(parser.get_parsed_content("channels_last")),
        losses=[round(v, 5) for v in losses],
        first_loss_mean=round(first, 5),
        last_loss_mean=round(last, 5),
        loss_falls=last < first,
        images_per_second=round(batch * (len(stamps) - 2) / (stamps[-1] - stamps[1]), 2) if len(stamps) > 2 else None,
    )


def deploy(result: dict, sizes: Sizes, device: torch.device, data_dir: str) -> None:
    import deploy_latency

    from testbed.bundles import make_bundle, tiny_deploy

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "deploy_latency.json"
        model = str(make_bundle(Path(tmp) / "bundle", tiny_deploy(num_steps=10))) if sizes.deploy_tiny else None
        deploy_latency.main(
            model=model, repeats=sizes.deploy_repeats, threads=torch.get_num_threads(), out=str(out), data_dir=data_dir
        )
        result.update(json.loads(out.read_text()))


def main(
    out_dir: str = "results/gpu_check",
    smoke: bool = False,
    deadline: float = 450.0,
    sections: str | tuple = SECTIONS,
    data_dir: str = str(ROOT / "bundle" / "data"),
    worker: str = "",
) -> dict | None:
    """Runs the sections (see the module docstring) and writes ``gpu_check.json`` and ``gpu_check.md``.

    Args:
        out_dir: where the record and table go.
        smoke: tiny sizes on the CPU (the test suite's run).
        deadline: seconds from the script's start after which no section starts (and a running one is cut).
        sections: which sections to run (comma-separated or a list), in the order of ``SECTIONS``.
        data_dir: the data set of the training section (built small when it has no datalist_2d.json).
        worker: internal: run as one torchrun rank of the ddp section, writing to this file.
    """
    if worker:
        return ddp_worker(worker, smoke)
    chosen = [s for s in SECTIONS if s in cli_list(sections)]
    sizes = Sizes.smoke() if smoke else Sizes()
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    record = {
        "command": " ".join(["python", "bench/gpu_check.py", *sys.argv[1:]]),
        "machine": machine(),
        "device": str(device),
        "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
        "cuda": torch.version.cuda,
        "smoke": smoke,
        "deadline_s": deadline,
        "startup_s": round(time.perf_counter() - STARTED, 1),
        "sections": {},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {
        "network_2d": lambda r, box: network_2d(r, sizes, device),
        "sampling": lambda r, box: sampling(r, sizes, device),
        "memory_3d": lambda r, box: memory_3d(r, sizes, device, box),
        "ddp": lambda r, box: ddp(r, sizes, device, smoke, box),
        "training": lambda r, box: training(r, sizes, device, data_dir),
        "deploy": lambda r, box: deploy(r, sizes, device, data_dir),
    }
    for name in chosen:
        left = deadline - (time.perf_counter() - STARTED)
        box = min(sizes.boxes[name], left)
        entry: dict = {"time_box_s": round(box, 1), "result": {}}
        record["sections"][name] = entry
        start = time.perf_counter()
        if box < 5:
            entry.update(status="skipped", error="the global deadline was reached")
        else:
            try:
                with time_box(box):
                    runs[name](entry["result"], box)
                entry["status"] = "ok"
            except Exception as e:  # one section's failure is recorded; the others still run
                entry["status"] = "timeout" if isinstance(e, SectionTimeout) else "error"
                entry["error"] = f"{type(e).__name__}: {e}"[:2000]
                entry["traceback"] = traceback.format_exc()[-3000:]
        entry["seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {entry['status']} in {entry['seconds']} s", flush=True)
        reset_memory(device)
        record["total_s"] = round(time.perf_counter() - STARTED, 1)
        (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
        try:
            table = gpu_check_table(record)
        except Exception as e:  # the record is written; a table that cannot be made says why
            table = f"the table could not be made: {type(e).__name__}: {e}\n"
        (out / "gpu_check.md").write_text(table)
    print(table)
    return record


if __name__ == "__main__":
    fire.Fire(main)
