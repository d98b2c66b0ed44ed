"""Shared test fixtures: the data built once, a bundle runner, tiny networks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import from_engine

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"

# a UNet small enough for CPU tests; the structure (levels, attention, ControlNet/SPADE) is the real one
TINY = {
    "unet#channels": [8, 16],
    "unet#attention_levels": [False, True],
    "unet#num_head_channels": 8,
    "unet#norm_num_groups": 4,
    "classifier_path": "",  # the shipped classifier reads 64 x 64 images: no class accuracy for tiny models
}
TINY_2D = {**TINY, "image_size": [16, 16]}
TINY_3D = {**TINY, "image_size": [16, 16, 16]}
VARIANTS = ["uncond_2d", "class_2d", "mask_2d", "mask_class_2d", "mask_spade_2d", "uncond_3d", "mask_3d"]


def published_table(folder: Path, name: str) -> str:
    """The table of the record ``folder/<name>.json`` that a benchmark wrote, as bench/tables.py renders it."""
    from tables import BLOCKS

    return BLOCKS[name][1](json.loads((Path(folder) / f"{name}.json").read_text()))


def tiny(variant: str) -> dict:
    return TINY_3D if variant.endswith("3d") else TINY_2D


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A small synthetic-subject data set (3 training, 1 validation, 2 test subjects), built once per session with
    the project's builder."""
    from scripts.synthetic_subjects import build

    return Path(build(str(tmp_path_factory.mktemp("data") / "subjects"), subjects=(3, 1, 2), slice_step_mm=6))


def _two_per_subject(cases: list[dict]) -> list[dict]:
    """Two cases of each subject, at a third and two thirds of its slices."""
    subjects: dict[str, list[dict]] = {}
    for case in cases:
        subjects.setdefault(case["subject"], []).append(case)
    return [slices[len(slices) * k // 3] for slices in subjects.values() for k in (1, 2)]


@pytest.fixture(scope="session")
def small_datalist(data_dir: Path) -> Path:
    """A datalist over 8 training, 2 validation and 4 test slices (two of each test subject) of the data set."""
    full = json.loads((data_dir / "datalist_2d.json").read_text())
    small = {
        "training": full["training"][::8][:8],
        "validation": _two_per_subject(full["validation"]),
        "test": _two_per_subject(full["test"]),
    }
    path = data_dir / "datalist_small.json"
    path.write_text(json.dumps(small))
    return path


def run_bundle(configs: list[str], **overrides):
    """Runs a bundle workflow in this process (as ``python -m monai.bundle run`` does) and returns it.

    ``configs`` are file names under bundle/configs (variants as "variants/x.json").
    """
    files = [str(CONFIGS / c) for c in configs]
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, logging_file=False, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def datalist_for(variant: str, data_dir: Path, small_datalist: Path) -> str:
    return str(data_dir / "datalist_3d.json") if variant.endswith("3d") else str(small_datalist)


def train(
    variant: str, data_dir: Path, datalist: str, output_dir: Path, epochs: int, configs: tuple = (), **extra
) -> list[float]:
    """Trains a tiny model of ``variant`` in this process (``configs``: extra config files merged after the
    variant, e.g. train_ddpm.json); returns the loss of every iteration."""
    overrides = {
        **tiny(variant),
        "dataset_dir": str(data_dir),
        "datalist": datalist,
        "output_dir": str(output_dir),
        "lr": 1e-3,
        "batch_size": 4,
        "train#trainer#max_epochs": epochs,
        "preview_interval": epochs,
        "checkpoint_interval": epochs,
        **extra,
    }
    return train_losses(["train.json", f"variants/{variant}.json", *configs], **overrides)


def train_losses(configs: list[str], **overrides) -> list[float]:
    """Runs a training workflow (``configs``: files under bundle/configs) in this process; returns the loss of every
    iteration this run made (a resumed run: only the new ones)."""
    files = [str(CONFIGS / c) for c in configs]
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, logging_file=False, **overrides)
    workflow.initialize()
    losses: list[float] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output)))
    )
    workflow.run()
    return losses


def sample(
    variant: str, data_dir: Path, datalist: str, ckpt: Path, output_dir: Path, configs: tuple = (), **extra
) -> Path:
    """Runs inference (plus ``configs``, e.g. inference_ddpm.json or evaluate.json) with a tiny model."""
    settings = {"num_steps": 2, "num_samples": 3, **tiny(variant), **extra}
    run_bundle(
        ["inference.json", f"variants/{variant}.json", *configs],
        dataset_dir=str(data_dir),
        datalist=datalist,
        ckpt_path=str(ckpt),
        output_dir=str(output_dir),
        **settings,
    )
    return output_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, data_dir, small_datalist) -> Path:
    """A tiny mask_class_2d flow model trained for a few iterations with the bundle's train config."""
    out = tmp_path_factory.mktemp("tiny_model")
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs=3)
    return out / "model.pt"


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory, data_dir, small_datalist) -> Path:
    """The DDPM baseline of ``tiny_model``: same network, data and iterations, trained with train_ddpm.json."""
    out = tmp_path_factory.mktemp("tiny_ddpm")
    train("mask_class_2d", data_dir, str(small_datalist), out, epochs=3, configs=("train_ddpm.json",))
    return out / "model.pt"


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory, small_datalist) -> str:
    """A tiny tissue segmenter trained on the small real training split, saved as a model file."""
    from scripts import downstream
    from scripts.data import load_cases, percentile_range

    cases = load_cases(str(small_datalist), "training", use_mask=True)
    rng = percentile_range(cases)
    net = downstream.train("segmenter", cases, [16, 16], 4, rng, num_labels=4, iterations=6, batch_size=4)
    path = str(tmp_path_factory.mktemp("seg") / "segmenter.pt")
    downstream.save(path, "segmenter", net, [16, 16], 4, rng)
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One CPU thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): the test
    machine is shared, and tiny networks gain nothing from more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory, small_datalist) -> str:
    """A tiny axial-level classifier trained on the small real training split, saved as a model file."""
    from scripts import downstream
    from scripts.data import load_cases, percentile_range

    cases = load_cases(str(small_datalist), "training", use_mask=True, num_classes=3)
    rng = percentile_range(cases)
    net = downstream.train("classifier", cases, [16, 16], 3, rng, iterations=6, batch_size=4)
    path = str(tmp_path_factory.mktemp("cls") / "classifier.pt")
    downstream.save(path, "classifier", net, [16, 16], 3, rng)
    return path


@pytest.fixture(scope="module")
def volumes(data_dir: Path):
    """A test subject's 3D image and label volumes (nibabel images), to write DICOM studies from."""
    from testbed.studies import load_volumes

    return load_volumes(data_dir)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A folder holding a tiny bundle (32 x 32, 2 Euler steps), as a packaged app's model folder."""
    from testbed.bundles import make_bundle, tiny_deploy

    folder = tmp_path_factory.mktemp("models")
    make_bundle(folder / "motfm", tiny_deploy())
    return folder


# errors a user's bad input may surface as (MONAI wraps transform and config errors in RuntimeError)
USER_ERRORS = (RuntimeError, ValueError, FileNotFoundError)


def messages(exc: BaseException | None) -> Iterator[str]:
    """The messages of an exception and of its causes (MONAI wraps transform and config errors)."""
    while exc is not None:
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def error_text(excinfo) -> str:
    return " | ".join(messages(excinfo.value))
