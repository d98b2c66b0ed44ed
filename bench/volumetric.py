"""The paper's 3D comparison in small: the mask_3d flow model against its DDPM baseline on the 3D test subjects.

Flow matching at 1, 2, 10 and 50 NFE (Euler) and the DDPM baseline (ancestral at 1000 steps, DDIM at 50), the two
trained alike (``train.json`` + ``variants/mask_3d.json``, the baseline with ``train_ddpm.json`` after them). Each
setting generates the test split through the bundle's inference and evaluation configs once per seed (``seeds``),
then:

- feature distance: a Frechet distance in the features of the 3D segmenter trained here on the training subjects
  only (``train_segmenter.json`` + ``train_segmenter_3d.json``). With 4 test subjects a Frechet distance over whole
  volumes (4 feature vectors against 4, in 240 dimensions) measures its own estimation noise, so each volume gives
  the features of its overlapping patches: half the image size on each axis, at a quarter-size step (27 patches;
  the segmenter is convolutional, so it reads a patch as it reads a volume). ``fd_patches`` compares the patches of
  one seed's generated test volumes with those of the real *validation* volumes, subjects neither network saw,
  beside the floor ``fd_patches_real``: the real test volumes against the same validation volumes. The two rest on
  sets of the same sizes, so they share the small-sample bias, and a generator that returned the real test volumes
  would score the floor exactly; ``fd_patches`` is the mean over seeds, with the seeds' range;
- following the mask: ``mask_dice`` (the 3D segmenter on the generated volumes against their masks) beside
  ``mask_dice_real`` (on the real volumes: the ceiling);
- diversity: ``ms_ssim_diversity``, the 3D MS-SSIM among a seed's generated volumes (beside the real volumes'),
  and ``conditional_ms_ssim``, the mean 3D MS-SSIM among the seeds' volumes of one mask (1: the noise is ignored);
- ``interplane_ratio`` beside ``interplane_ratio_real`` (second differences along the feet-head axis over in-plane:
  see ``scripts.metrics.interplane_ratio``), and seconds per volume (the whole test split in one network batch).

Writes ``volumetric.json`` (one record), ``volumetric.png`` (the first test
volume's mask, the real volume and each setting's first seed, as central axial, coronal and sagittal planes: the
reformats show whether planes agree) into ``out_dir``. Each seed's set and
metrics, and each row, are kept in ``work_dir`` with the settings and the checkpoint and segmenter digests they
depend on: rerun the same command after an interruption and it goes on from the first seed not yet generated.
The image size is the flow model's (its card); the DDPM baseline and the segmenter must share it.

    python bench/volumetric.py                                      # the shipped 3D models, the default sweep
    python bench/volumetric.py --out_dir bundle/docs/records        # to update the documented record
    python bench/volumetric.py --ddpm_steps 0 --seeds "(0,1)"       # quicker; see --help for every flag
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import torch
from records import CONFIGS, ROOT, generate_and_evaluate, one_batch, publish, resumable, run_info, workflow
from sampling import settings as sampler_settings
from tables import SHARPNESS_KEYS, volumetric_table

from scripts import downstream, metrics, visualize
from scripts.checkpoint import read_checkpoint
from scripts.data import load_cases, load_images, to_model_range
from scripts.evaluation import intensity_mismatch
from scripts.provenance import file_sha256

KEPT = (  # the evaluation's metrics a row keeps, averaged over seeds
    "mask_dice",
    "mask_dice_real",
    "ms_ssim_diversity",
    "ms_ssim_diversity_real",
    "interplane_ratio",
    "interplane_ratio_real",
    "seconds_per_sample",
    *SHARPNESS_KEYS,
)


def settings(nfe: Sequence[int], ddim_steps: Sequence[int], ddpm_steps: int) -> list[dict]:
    """The sweep's sampler settings: flow with Euler at each NFE, DDIM at each step count, DDPM ancestral."""
    return [s for s in sampler_settings(nfe, ddim_steps, ddpm_steps) if s["solver"] != "midpoint"]


def patch_features(segmenter: torch.nn.Module, volumes: torch.Tensor) -> torch.Tensor:
    """Segmenter features of every volume's overlapping patches: volumes (N, 1, D, H, W) -> (N * P, F), patches of
    half the size on each axis at a quarter-size step (P = 27 for sides divisible by 4: 3 per axis). Sides of 32 or
    more: a patch of 16 reaches the segmenter's bottom level as 2 x 2 x 2 (instance norm needs more than one)."""
    if min(volumes.shape[2:]) < 32:
        raise ValueError(f"patches of half of {tuple(volumes.shape[2:])} are too small for the segmenter's 3 levels")
    patches = volumes
    for axis, size in enumerate(volumes.shape[2:], start=2):
        patches = patches.unfold(axis, size // 2, size // 4)  # the axis counts windows; a last axis is added
    patches = patches.movedim(1, 4).reshape(-1, 1, *(s // 2 for s in volumes.shape[2:]))
    return downstream.segmenter_features(segmenter, patches, batch_size=16)


def generate(setting: dict, ckpt: str, out: str, seed: int, overrides: dict) -> dict:
    """One seed's set of the test split, through the bundle's inference + evaluation; returns its ``KEPT`` metrics.
    The evaluation gets no generator, so it draws no further samples for conditional diversity (the seeds give it)."""
    result, _ = generate_and_evaluate(
        setting["method"],
        out,
        ckpt_path=ckpt,
        solver=setting["solver"],
        num_steps=setting["num_steps"],
        seed=seed,
        **{"evaluation#network": None, **overrides},
    )
    return {**{k: result.get(k) for k in KEPT}, "nfe": result["nfe"], "device": result.get("device")}


def measure(setting: dict, ckpt: str, run: Path, seeds: list[int], key: dict, reference: dict, overrides: dict) -> dict:
    """A row: every seed's set (each kept in ``run/seed_<s>``), its metrics averaged over seeds (with their range in
    ``seed_range``), the patch Frechet distance to ``reference["validation"]``'s features, conditional MS-SSIM."""
    per_seed = [
        resumable(run / f"seed_{s}", {**key, "seed": s}, generate, setting, ckpt, str(run / f"seed_{s}"), s, overrides)
        for s in seeds
    ]
    volumes = [  # each seed's generated volumes (N, 1, D, H, W) in the real volumes' normalisation
        to_model_range(
            load_images(load_cases(str(run / f"seed_{s}/datalist.json"), "training"), reference["transforms"]),
            reference["scale"],
        )
        for s in seeds
    ]
    values = {k.replace("per_sample", "per_volume"): [r[k] for r in per_seed] for k in KEPT}
    values["fd_patches"] = [
        metrics.frechet_distance(patch_features(reference["segmenter"], v), reference["validation"]) for v in volumes
    ]
    row = {**setting, "nfe": per_seed[0]["nfe"], "seeds": seeds, "device": per_seed[0]["device"]}
    row |= {k: _mean(v) for k, v in values.items()}
    ranged = {k: v for k, v in values.items() if not k.endswith("_real") and None not in v and len(v) > 1}
    row["seed_range"] = {k: [min(v), max(v)] for k, v in ranged.items()}  # the real volumes' are one value
    groups = torch.stack(volumes, dim=1)  # (N, seeds, 1, D, H, W)
    row["conditional_ms_ssim"] = float(metrics.conditional_ms_ssim(groups).mean()) if len(seeds) > 1 else None
    return row


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else sum(values) / len(values)


def main(
    flow_ckpt: str = str(ROOT / "bundle/models/model_3d.pt"),
    ddpm_ckpt: str = str(ROOT / "bundle/models/model_ddpm_3d.pt"),
    segmenter_path: str = str(ROOT / "bundle/models/segmenter_3d.pt"),
    out_dir: str = "results/volumetric",
    work_dir: str = "results/volumetric_runs",
    nfe: tuple = (1, 2, 10, 50),
    ddim_steps: tuple = (50,),
    ddpm_steps: int = 1000,
    seeds: tuple = (0, 1, 2),
    overrides: str = "{}",
) -> dict:
    """Runs the benchmark; prints, saves and returns the record.

    Args:
        flow_ckpt, ddpm_ckpt: the two mask_3d models (trained alike); segmenter_path: the 3D segmenter (same size).
        out_dir: where the record and table go; work_dir: each seed's set and each row's result (kept to resume).
        nfe: flow Euler NFE values; ddim_steps: DDIM step counts; ddpm_steps: DDPM ancestral steps (0 to skip).
        seeds: noise seeds: one generated set of the test split each (two or more for conditional MS-SSIM).
        overrides: JSON dict of bundle config overrides (e.g. a datalist or a tiny network for tests).
    """
    start = time.perf_counter()
    if not Path(segmenter_path).is_file():
        raise FileNotFoundError(
            f"no 3D segmenter at {segmenter_path}; train one with "
            "\"['bundle/configs/train_segmenter.json','bundle/configs/train_segmenter_3d.json']\""
        )
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    variant = json.loads((CONFIGS / "variants/mask_3d.json").read_text())
    variant.pop("batch_size")  # training's: sampling takes the whole test split in one batch (``one_batch``)
    image_size = read_checkpoint(flow_ckpt)["card"]["image_size"]
    base = {**variant, "segmenter_path": segmenter_path, **extra, "image_size": image_size}
    sample_overrides = one_batch(base, flow_ckpt)
    reference = real_reference(flow_ckpt, segmenter_path, sample_overrides)

    models = {"flow": flow_ckpt, "ddpm": ddpm_ckpt}
    digests = {name: file_sha256(path) for name, path in {**models, "segmenter": segmenter_path}.items()}
    seeds, work, rows, runs = [int(s) for s in seeds], Path(work_dir).resolve(), [], {}
    for setting in settings(nfe, ddim_steps, ddpm_steps):
        name = f"{setting['method']}-{setting['solver']}-{setting['nfe']}"
        key = {
            **setting,
            "checkpoint_sha256": digests[setting["method"]],
            "segmenter_sha256": digests["segmenter"],
            "overrides": sample_overrides,
        }
        ckpt, run = models[setting["method"]], work / name
        runs[name] = run / f"seed_{seeds[0]}"
        row_key = {**key, "seeds": seeds}
        rows.append(resumable(run, row_key, measure, setting, ckpt, run, seeds, key, reference, sample_overrides))
        print(f"{name}: {rows[-1]['seconds_per_volume']} s per volume")
    record = {
        **run_info("volumetric"),
        "settings": {
            "image_size": image_size,
            "seeds": seeds,
            "test_volumes": reference["test_volumes"],
            "validation_volumes": reference["validation_volumes"],
            "patches_per_volume": reference["patches_per_volume"],
            "patch_size": [s // 2 for s in image_size],
        },
        "fd_patches_real": reference["fd_patches_real"],
        "models": {name: read_checkpoint(path)["card"].get("provenance", {}) for name, path in models.items()},
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    publish(record, out_dir, volumetric_table)
    save_planes(str(Path(out_dir) / "volumetric.png"), reference, runs)
    return record


def save_planes(path: str, reference: dict, runs: dict[str, Path]) -> str:
    """The first test case's mask, real volume and generated volume of each setting (``runs``: name -> a seed's
    folder), each as its central axial, coronal and sagittal planes, on one grey window."""
    rows = [("mask", reference["first_mask"]), ("real", reference["first_image"])]
    for name, folder in runs.items():
        case = load_cases(str(folder / "datalist.json"), "training")[:1]
        rows.append((name, to_model_range(load_images(case, reference["transforms"]), reference["scale"])[0]))
    planes = [(name, visualize.orthogonal_planes(volume)) for name, volume in rows]
    return visualize.save_grid(path, planes, titles=["axial", "coronal", "sagittal"], value_range=(-1.0, 1.0))


def real_reference(flow_ckpt: str, segmenter_path: str, overrides: dict) -> dict:
    """The real side of the patch distance: the segmenter, the transforms and normalisation the evaluation uses,
    the validation volumes' patch features and the floor ``fd_patches_real`` (real test against validation), and
    the first test volume and its mask (C, *spatial) for the picture."""
    real = {}
    for split in ("test", "validation"):
        parser = workflow(["inference.json", "evaluate.json"], ckpt_path=flow_ckpt, split=split, **overrides).parser
        transforms, cases = parser.get_parsed_content("evaluation#transforms"), parser.get_parsed_content("real_cases")
        real[split] = load_images(cases, transforms)
        if split == "test":
            first_mask = load_images(cases[:1], transforms, key="label")[0]
    intensity_range = parser.get_parsed_content("intensity_range")
    scale = None if intensity_mismatch(torch.cat(list(real.values())), intensity_range) else intensity_range
    size, labels, device = (parser.get_parsed_content(k) for k in ("image_size", "num_labels", "device"))
    segmenter = downstream.load(segmenter_path, "segmenter", size, labels, device)
    features = {split: patch_features(segmenter, to_model_range(x, scale)) for split, x in real.items()}
    return {
        "segmenter": segmenter,
        "first_image": to_model_range(real["test"][:1], scale)[0],
        "first_mask": first_mask,
        "transforms": transforms,
        "scale": scale,
        "validation": features["validation"],
        "fd_patches_real": metrics.frechet_distance(features["test"], features["validation"]),
        "test_volumes": len(real["test"]),
        "validation_volumes": len(real["validation"]),
        "patches_per_volume": len(features["test"]) // len(real["test"]),
    }


if __name__ == "__main__":
    fire.Fire(main)
