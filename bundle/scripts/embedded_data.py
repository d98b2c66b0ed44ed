"""Build the embedded default data set offline from nilearn's MNI152 2009 template.

Writes skull-stripped T1 images with tissue label masks (0 background, 1 CSF and other brain,
2 grey matter, 3 white matter):

- ``2d/``: axial slices of the 1 mm template, each with a class: its axial level
  (0 inferior, 1 middle, 2 superior third of the brain's extent);
- ``3d/``: the 2 mm template as one volume;
- ``datalist_2d.json`` / ``datalist_3d.json``: MONAI datalists (``training``, ``validation``, ``test``)
  with paths relative to the output folder.

Run ``python bundle/scripts/embedded_data.py --out_dir bundle/data``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import fire
import nibabel as nib
import numpy as np

LABEL_NAMES = ("background", "csf_and_other_brain", "grey_matter", "white_matter")
LEVEL_NAMES = ("inferior", "middle", "superior")
INTENSITY_SCALE = 1000.0  # the template is in [0, 1]; store it as integer MR-like units
MARGIN = 4  # voxels kept around the brain's bounding box


def _load_template(resolution: int) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """Returns (skull-stripped T1 image, tissue labels, brain mask), all on the template grid (X, Y, Z)."""
    from nilearn import datasets  # imported here: nilearn is slow to import and only needed to build data

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0.5
    labels = tissue_labels(brain, gm, wm)
    image = np.where(brain, t1.get_fdata() * INTENSITY_SCALE, 0).round().astype(np.int16)
    return nib.Nifti1Image(image, t1.affine), labels, brain


def tissue_labels(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Tissue label map from a brain mask and grey/white-matter probabilities (all the same shape).

    Inside the brain each voxel takes the most probable of CSF/other (1 - gm - wm), grey (gm) and white (wm)
    matter; outside it is background. Returns uint8 labels 0..3.
    """
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8) + 1
    return np.where(brain, tissue, 0).astype(np.uint8)


def _crop_to_brain(image: nib.Nifti1Image, labels: np.ndarray, brain: np.ndarray):
    """Crops image and labels to the brain's bounding box plus MARGIN; returns the cropped images."""
    lo = np.maximum(np.argwhere(brain).min(0) - MARGIN, 0)
    hi = np.minimum(np.argwhere(brain).max(0) + MARGIN + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    cropped = image.slicer[box]
    return cropped, nib.Nifti1Image(labels[box], cropped.affine), brain[box]


def axial_level(z: int, z_min: int, z_max: int) -> int:
    """Class of an axial slice: 0, 1 or 2 for the inferior, middle or superior third of [z_min, z_max]."""
    return min(2, 3 * (z - z_min) // (z_max - z_min + 1))


def _save(img: nib.Nifti1Image, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(img, path)
    return path


def _write_2d(out_dir: str, test_every: int, min_brain_fraction: float) -> dict:
    image, labels, brain = _crop_to_brain(*_load_template(resolution=1))
    area = brain.reshape(-1, brain.shape[2]).mean(0)
    z_brain = np.flatnonzero(brain.any(axis=(0, 1)))
    z_min, z_max = int(z_brain.min()), int(z_brain.max())
    cases = []
    for z in np.flatnonzero(area >= min_brain_fraction):
        z = int(z)
        name = f"slice_{z:03d}.nii.gz"
        img_z = image.slicer[:, :, z : z + 1]
        affine = img_z.affine  # keeps the slice's position in MNI space
        _save(nib.Nifti1Image(np.asarray(img_z.dataobj)[..., 0], affine), os.path.join(out_dir, "2d/images", name))
        _save(nib.Nifti1Image(np.asarray(labels.dataobj)[..., z], affine), os.path.join(out_dir, "2d/labels", name))
        cases.append(
            {"image": f"2d/images/{name}", "label": f"2d/labels/{name}", "class": axial_level(z, z_min, z_max)}
        )
    # every `test_every`-th slice is held out for test, the one half-way between for validation
    split = {"training": [], "validation": [], "test": []}
    for i, case in enumerate(cases):
        key = "test" if i % test_every == test_every // 2 else "validation" if i % test_every == 0 else "training"
        split[key].append(case)
    return split


def _write_3d(out_dir: str) -> dict:
    image, labels, _ = _crop_to_brain(*_load_template(resolution=2))
    _save(image, os.path.join(out_dir, "3d/image.nii.gz"))
    _save(labels, os.path.join(out_dir, "3d/label.nii.gz"))
    case = {"image": "3d/image.nii.gz", "label": "3d/label.nii.gz"}
    # a single subject: the one volume serves every split (a demo and smoke-test set; bring MSD Task01 for real 3D)
    return {"training": [case], "validation": [case], "test": [case]}


def _meta(split: dict, description: str) -> dict:
    return {
        "description": description,
        "source": "MNI ICBM 152 2009a nonlinear symmetric template, from nilearn (see bundle/docs/data_license.txt)",
        "labels": dict(enumerate(LABEL_NAMES)),
        **split,
    }


def build(out_dir: str = "bundle/data", test_every: int = 10, min_brain_fraction: float = 0.05) -> str:
    """Writes the embedded data set to ``out_dir`` (replacing it) and returns the folder.

    Args:
        out_dir: destination folder; it is written in a temporary folder beside it, then moved into place.
        test_every: one 2D slice in this many goes to ``test``, one to ``validation``.
        min_brain_fraction: 2D slices whose brain covers less of the (cropped) slice are left out.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".embedded-", dir=os.path.dirname(out_dir))
    try:
        split2d = _write_2d(staging, test_every, min_brain_fraction)
        split2d = _meta(split2d, "Axial MNI152 slices (1 mm), class = axial level " + "/".join(LEVEL_NAMES))
        split3d = _meta(_write_3d(staging), "MNI152 volume (2 mm)")
        for name, content in (("datalist_2d.json", split2d), ("datalist_3d.json", split3d)):
            with open(os.path.join(staging, name), "w") as f:
                json.dump(content, f, indent=1)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = {k: len(split2d[k]) for k in ("training", "validation", "test")}
    print(f"embedded data written to {out_dir}: 2D slices {counts}, one 3D volume")
    return out_dir


if __name__ == "__main__":
    fire.Fire(build)
