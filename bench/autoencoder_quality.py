"""Reconstruction quality of the 3D autoencoder (``train_autoencoder.json``) on the test subjects' whole volumes.

Each test volume, on the autoencoder's grid (the data's own voxels padded/cropped to the card's ``image_size``, in
[-1, 1] from the card's intensity range), is encoded to its latent mean and decoded, one volume at a time. Records,
per volume and their mean: PSNR and SSIM (``scripts.metrics``), the mean absolute error inside each tissue of the
volume's label map (labels 1, 2, 3; in [-1, 1] units), the high-frequency power ratio reconstruction / real
(``scripts.metrics.high_frequency_power`` inside the brain, reconstruction over real: below 1 is blur), and
seconds per volume to encode and to decode on this machine; and the latent grid.

Writes ``autoencoder_quality.json`` (the record) and ``autoencoder_quality.png`` (the first test volume's central
axial, coronal and sagittal planes, real above reconstruction) into ``out_dir``.

    python bench/autoencoder_quality.py --ckpt_path runs/autoencoder_3d/model.pt
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import torch
from records import ROOT, run_info, save

from scripts import metrics, visualize
from scripts.autoencoder import load_autoencoder
from scripts.batches import without_meta
from scripts.data import input_transforms, load_batch, load_cases
from scripts.provenance import file_sha256

TISSUES = (1, 2, 3)
PLANES = ("axial", "coronal", "sagittal")


def tissue_errors(real: torch.Tensor, reconstruction: torch.Tensor, label: torch.Tensor) -> dict:
    """Mean absolute error inside each of ``TISSUES`` of one volume's label map (all (1, *spatial)); None where the
    tissue is absent."""
    errors = {}
    for tissue in TISSUES:
        inside = label == tissue
        errors[tissue] = float((reconstruction - real).abs()[inside].mean()) if inside.any() else None
    return errors


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (None if none is)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def main(
    ckpt_path: str = "runs/autoencoder_3d/model.pt",
    datalist: str = str(ROOT / "bundle/data/datalist_3d.json"),
    split: str = "test",
    out_dir: str = "results/autoencoder_quality",
) -> dict:
    """Encodes and decodes every volume of ``split``; prints and saves the record."""
    network, card = load_autoencoder(ckpt_path)
    names = json.loads(Path(datalist).read_text()).get("labels", {})
    cases = load_cases(datalist, split, use_mask=True)
    transforms = input_transforms(card["image_size"], len(TISSUES) + 1, card["intensity_range"], resize=False)
    rows, first = [], None
    with torch.no_grad():
        for case in cases:
            batch = load_batch([case], transforms)
            real, label = without_meta(batch["image"]), without_meta(batch["label"])
            start = time.perf_counter()
            latent = network.encode(real)
            encoded = time.perf_counter()
            reconstruction = network.decode(latent)
            decoded = time.perf_counter()
            errors = tissue_errors(real[0], reconstruction[0], label[0])
            rows.append(
                {
                    "case": case["id"],
                    "psnr": float(metrics.psnr_per_case(real, reconstruction)[0]),
                    "ssim": float(metrics.ssim_per_case(real, reconstruction)[0]),
                    "hf_power_ratio": float(
                        metrics.high_frequency_power(reconstruction, label) / metrics.high_frequency_power(real, label)
                    ),
                    "mae_per_tissue": {names.get(str(t), str(t)): e for t, e in errors.items()},
                    "encode_seconds": round(encoded - start, 3),
                    "decode_seconds": round(decoded - encoded, 3),
                }
            )
            first = first or (real[0], reconstruction[0])
    scalars = ("psnr", "ssim", "hf_power_ratio", "encode_seconds", "decode_seconds")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in scalars}
    mean["mae_per_tissue"] = {n: _mean([r["mae_per_tissue"][n] for r in rows]) for n in rows[0]["mae_per_tissue"]}
    provenance = card.get("provenance") or {}
    record = {
        **run_info("autoencoder_quality"),
        "settings": {"ckpt_path": str(Path(ckpt_path).resolve()), "datalist": datalist, "split": split},
        "model": {
            "sha256": file_sha256(ckpt_path),
            "network": card["network"],
            "image_size": card["image_size"],
            "latent_scale": provenance.get("latent_scale"),
            "iterations": provenance.get("iterations"),
        },
        "latent_shape": list(latent.shape[1:]),
        "mean": mean,
        "cases": rows,
    }
    out = Path(out_dir)
    save(record, str(out / "autoencoder_quality.json"))
    real, reconstruction = first
    planes = [
        ("real", visualize.orthogonal_planes(real)),
        ("reconstruction", visualize.orthogonal_planes(reconstruction)),
    ]
    visualize.save_grid(str(out / "autoencoder_quality.png"), planes, titles=PLANES, value_range=(-1.0, 1.0))
    return record


if __name__ == "__main__":
    fire.Fire(main)
