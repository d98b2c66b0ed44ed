"""The blur ablation: which part of the training recipe makes samples a blurred conditional mean.

Each arm trains the shipped 2D recipe (``train.json``, mask + class conditioned) for the same number of epochs with one
change (``ARMS``): from scratch, or as a fine-tune of the shipped model (cheap on a CPU, and it shows what moves the
sharpness of a model that has already learned the anatomy). Then each samples the test split at 10 Euler NFE through
the bundle's inference and evaluation configs; the record keeps each arm's metrics (sharpness, contrast diversity,
texture and segmenter feature distances, mask Dice, with their intervals), its training seconds (the arm's cost) and a
picture of its samples.

Arms train in ``work_dir/<arm>`` and resume where they stopped when the command is run again; a finished arm is
reused. ``--arms`` picks some; ``--threads`` sets torch's threads of this process (two processes of one thread each
use two cores better than one of two).

    python bench/blur_ablation.py train --arms control,flip_shift --threads 1 --work_dir runs/blur_ablation
    python bench/blur_ablation.py evaluate --work_dir runs/blur_ablation --out_dir bundle/docs/records
"""

from __future__ import annotations

import os
from pathlib import Path

import fire
import nibabel as nib
import torch
from records import ROOT, cli_list, one_batch, run_info, save, test_subset, workflow
from sampling import resumable_sample_and_evaluate

from scripts.batches import without_meta
from scripts.checkpoint import read_checkpoint
from scripts.data import AUGMENTATIONS, input_transforms, load_batch, load_cases
from scripts.metrics import high_frequency_power
from scripts.visualize import save_grid

SHIPPED = str(ROOT / "bundle" / "models" / "model.pt")
# from scratch: the shipped recipe (flip + bilinear affine, uniform t, ControlNet, velocity loss, EMA 0.999) and
# changes of what cannot be fine-tuned; "ft_": fine-tunes of the shipped model, each with one change of its recipe
ARMS: dict[str, dict] = {
    "control": {},
    "spade": {"mask_network": "spade"},
    "ft_control": {"init_ckpt": SHIPPED},
    "ft_flip_shift": {"init_ckpt": SHIPPED, "augment": "flip_shift"},
    "ft_logit_normal": {"init_ckpt": SHIPPED, "time_schedule": "logit_normal"},
}
EPOCHS = 6


def train(arms: str = ",".join(ARMS), work_dir: str = "runs/blur_ablation", epochs: int = EPOCHS, threads: int = 0):
    """Trains (or resumes) each arm for ``epochs`` epochs in ``work_dir/<arm>``."""
    if threads:
        torch.set_num_threads(threads)
    for arm in cli_list(arms):
        if trained(Path(work_dir) / arm / "model.pt", epochs):
            print(f"{arm}: trained")
            continue
        overrides = {"checkpoint_interval": 1, "preview_interval": 1000, "train#trainer#max_epochs": epochs}
        if "init_ckpt" in ARMS[arm]:  # a fine-tune keeps its base's intensity scaling
            overrides["intensity_range"] = read_checkpoint(ARMS[arm]["init_ckpt"])["card"]["intensity_range"]
        workflow(["train.json"], output_dir=str(Path(work_dir) / arm), **overrides, **ARMS[arm]).run()


def trained(model: Path, epochs: int = EPOCHS) -> bool:
    """Whether the model file exists and its card says it has trained ``epochs`` epochs."""
    return model.is_file() and read_checkpoint(str(model))["card"]["provenance"].get("epochs", 0) >= epochs


SETTING = {"method": "flow", "solver": "euler", "num_steps": 10, "nfe": 10}
PICTURED = 6  # test cases in the picture


def evaluate(
    arms: str = ",".join(ARMS),
    work_dir: str = "runs/blur_ablation",
    out_dir: str = "results/blur_ablation",
    case_stride: int = 4,
) -> dict:
    """Samples the test split (every ``case_stride``-th case) with each trained arm and the shipped model at
    ``SETTING``; writes ``blur_ablation.json`` and ``blur_ablation.png`` (a few cases' samples, one row per arm)."""
    work = Path(work_dir).resolve()
    models = {"shipped": SHIPPED} | {arm: str(work / arm / "model.pt") for arm in cli_list(arms)}
    overrides = one_batch(test_subset({}, case_stride, work), SHIPPED)
    cases = load_cases(overrides["datalist"], "test", str(ROOT / "bundle" / "data"))[:PICTURED]
    rows, pictures = [], [("real", [_read(case["image"]) for case in cases])]
    for name, ckpt in models.items():
        if name != "shipped" and not trained(Path(ckpt)):
            print(f"{name}: not trained yet, left out")
            continue
        row = resumable_sample_and_evaluate(SETTING, ckpt, work / "samples" / name, overrides)
        provenance = read_checkpoint(ckpt)["card"]["provenance"]
        rows.append({"arm": name, **ARMS.get(name, {}), **row, "training": _cost(provenance)})
        images = work / "samples" / name / "images"
        pictures.append((name, [_read(str(images / f"{case['id']}.nii.gz")) for case in cases]))
    record = {
        **run_info("blur_ablation"),
        "setting": SETTING,
        "case_stride": case_stride,
        "rows": rows,
        "targets": target_sharpness(),
    }
    os.makedirs(out_dir, exist_ok=True)
    save(record, os.path.join(out_dir, "blur_ablation.json"))
    save_grid(os.path.join(out_dir, "blur_ablation.png"), pictures)
    return record


def target_sharpness(count: int = 256, seed: int = 0) -> dict:
    """What each training augmentation leaves of the data's fine detail: for ``count`` training slices (evenly
    spread), the mean over slices of the high-frequency power (``metrics.high_frequency_power``, in the brain) of
    the augmented slice over the same slice without augmentation, on the model's grid."""
    cases = load_cases(str(ROOT / "bundle" / "data" / "datalist_2d.json"), "training", use_mask=True)
    cases = cases[:: max(1, len(cases) // count)][:count]
    intensity_range = read_checkpoint(SHIPPED)["card"]["intensity_range"]
    power = {}
    for augment in AUGMENTATIONS:
        transforms = input_transforms([64, 64], 4, intensity_range, augment).set_random_state(seed)
        batch = load_batch(cases, transforms)
        power[augment] = high_frequency_power(without_meta(batch["image"]), without_meta(batch["label"]))
    return {a: round(float((p / power["none"]).mean()), 4) for a, p in power.items() if a != "none"}


def _read(path: str) -> torch.Tensor:
    """A NIfTI slice as (1, H, W)."""
    image = nib.load(path)
    return torch.as_tensor(image.get_fdata()).float().reshape(1, *image.shape[:2])


def _cost(provenance: dict) -> dict:
    """What an arm's training cost: iterations, epochs and seconds, from its card."""
    return {k: provenance.get(k) for k in ("iterations", "epochs", "training_seconds")}


if __name__ == "__main__":
    fire.Fire({"train": train, "evaluate": evaluate})
