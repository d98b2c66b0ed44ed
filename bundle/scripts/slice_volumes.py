"""Slice one's own 3D volumes (NIfTI image + label pairs) into a 2D datalist to train a 2D model on.

Input (``src``): a folder with ``images/`` and ``labels/`` holding volumes of the same file names, or a JSON list
of ``{"image", "label", "subject"?}`` (paths relative to the JSON file). Each volume is one subject (its file
name, unless given), and the split is by subject, so no subject's slices are in two splits.

Each subject's axial planes (the voxel axis closest to feet-head) are kept every ``step_mm`` from its first
labelled plane to its last (``planes.labelled_planes``), as 2D NIfTI slices whose affines put them where they lay
(``planes.plane_affine``), with labels remapped by ``label_map`` and classed by the model's class rule
(``classes``, e.g. "axial_level": the third of the labelled extent). Writes ``images/``, ``labels/`` and
``datalist.json`` (as ``convert.py``), in a staging folder moved into place only when complete.

Run ``python bundle/scripts/slice_volumes.py --src my_volumes --out_dir data/mine_2d --step_mm 3``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import fire
import nibabel as nib
import numpy as np
from tqdm import tqdm

if __package__:
    from . import convert
    from .classes import CLASS_RULES, volume_classes
    from .planes import labelled_planes, plane_affine, take_plane
else:  # run as a file: python bundle/scripts/slice_volumes.py
    import convert
    from classes import CLASS_RULES, volume_classes
    from planes import labelled_planes, plane_affine, take_plane

SUFFIXES = (".nii.gz", ".nii")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    return next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)


def list_volumes(src: str) -> list[dict]:
    """The ``{"image", "label", "subject"}`` volumes of ``src`` (a folder with images/ and labels/, or a JSON
    list), absolute paths; a missing file or unpaired image is an error naming it."""
    if os.path.isfile(src):
        try:
            with open(src) as f:
                items = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"volume list {src} is not valid JSON: {e}") from e
        if not isinstance(items, list) or not items:
            raise ValueError(f"volume list {src} must be a non-empty list of {{'image', 'label'}}")
        base = os.path.dirname(os.path.abspath(src))
        volumes = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not {"image", "label"} <= set(item):
                raise ValueError(f"item {i} of {src} must have 'image' and 'label'")
            paths = {k: os.path.normpath(os.path.join(base, item[k])) for k in ("image", "label")}
            volumes.append({**paths, "subject": str(item.get("subject", _stem(paths["image"])))})
    else:
        src = convert._check_source(src)
        images = os.path.join(src, "images")
        if not os.path.isdir(images):
            raise FileNotFoundError(f"{src} must hold images/ and labels/ (or give a JSON list of volumes)")
        names = sorted(n for n in os.listdir(images) if n.endswith(SUFFIXES) and not n.startswith("."))
        if not names:
            raise ValueError(f"{images} holds no NIfTI volumes")
        volumes = [
            {"image": os.path.join(images, n), "label": os.path.join(src, "labels", n), "subject": _stem(n)}
            for n in names
        ]
    for volume in volumes:
        for key in ("image", "label"):
            if not os.path.isfile(volume[key]):
                raise FileNotFoundError(f"{key} file not found: {volume[key]} (subject {volume['subject']})")
    return volumes


def _read(path: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A 3D volume and its array; an unreadable file or another shape is an error naming it."""
    try:
        image = nib.load(path)
        array = np.asarray(image.dataobj)
    except Exception as e:  # nibabel raises several types for truncated or corrupt files
        raise ValueError(f"{path}: cannot read volume ({type(e).__name__}: {e})") from e
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {array.shape}")
    return image, array


def slice_volumes(
    src: str,
    out_dir: str,
    step_mm: float = 3.0,
    label_map: Mapping[int, int] | str | None = None,
    num_labels: int = 4,
    rule: str = "axial_level",
    min_fraction: float = 0.05,
    fractions: Sequence[float] = convert.DEFAULT_FRACTIONS,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Slices every volume of ``src`` into axial 2D cases and writes a datalist split by subject; returns its path.

    Args:
        src: a folder with images/ and labels/, or a JSON list of ``{"image", "label", "subject"?}``.
        out_dir: the folder to write (it must not exist unless ``overwrite``).
        step_mm: distance between kept slices (at least one voxel).
        label_map: {source label: label} (or a JSON file of it) to bring labels to 0..num_labels - 1; None keeps them.
        num_labels: labels after the map (4 for the shipped model: background, CSF, grey, white matter).
        rule: the class rule of ``classes.CLASS_RULES`` that gives each slice its class.
        min_fraction: slices whose labelled fraction is below this are left out.
        fractions: (training, validation, test) fractions of the subjects.
        seed: seed of the split.
        overwrite: replace an existing ``out_dir``.
    """
    if rule not in CLASS_RULES:
        raise ValueError(f"rule must be one of {sorted(CLASS_RULES)}, got {rule!r}")
    if isinstance(label_map, str):
        with open(label_map) as f:
            label_map = json.load(f)
    volumes = list_volumes(src)
    subjects = [v["subject"] for v in volumes]
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"{src}: subject names must be unique, got {subjects}")
    source = os.path.realpath(src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src)))
    with convert._staging(out_dir, source, overwrite) as folder:
        split = convert.split_patients(subjects, fractions, seed)
        lists = {s: [] for s in convert.SPLITS}
        for volume in tqdm(volumes, desc="slice_volumes", unit="volume"):
            image, array = _read(volume["image"])
            label, _ = _read(volume["label"])
            if not np.allclose(image.affine, label.affine, atol=1e-3):
                raise ValueError(f"{volume['label']}: its affine differs from its image {volume['image']}")
            seg = convert._checked_label(label, array.shape, num_labels, volume["image"], label_map)
            axis, classes = volume_classes(CLASS_RULES[rule], seg, image.affine)
            spacing = float(np.linalg.norm(image.affine[:3, axis]))
            for k in labelled_planes(seg, axis, round(step_mm / spacing), min_fraction):
                pair = (
                    f"{volume['subject']}_plane-{k:03d}",
                    convert._like(take_plane(array, axis, k), plane_affine(image.affine, axis, k), image),
                    convert._like(take_plane(seg, axis, k), plane_affine(label.affine, axis, k), label),
                    int(classes[k]),
                )
                lists[split[volume["subject"]]].append(convert._write_pair(folder, *pair, subject=volume["subject"]))
        meta = {
            "description": f"axial slices every {step_mm} mm of {len(volumes)} volumes from {src}; class = {rule}",
            **({"label_map": {str(k): v for k, v in label_map.items()}} if label_map else {}),
            "split": f"by subject: fractions {list(fractions)}, seed {seed}",
        }
        convert._write_datalist(folder, lists, meta)
    return convert._report(f"slice_volumes, {len(volumes)} subjects", lists, out_dir)


if __name__ == "__main__":
    fire.Fire(slice_volumes)
