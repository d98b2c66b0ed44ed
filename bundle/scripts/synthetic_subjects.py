"""Build the default data set offline: synthetic subjects made from nilearn's MNI152 2009 template.

The template is one brain (the symmetric average of 152). Each subject is that brain under its own random
transform, with the tissue labels carried through the same transform so they stay on their image:

- a smooth diffeomorphic deformation (a random stationary velocity field integrated by scaling and squaring),
  displacements of a few millimetres (``max_displacement_mm``);
- a global affine: rotation, per-axis scaling (brain volume within about 10%), translation;
- intensity: a gamma (tissue contrast), a smooth multiplicative bias field and a global gain.

These are synthetic variations of one template, not real anatomical variety: no subject has its own folding
pattern, lesion, texture or noise. They do give distinct training, validation and test subjects, so the test
measures whether a model follows masks it has never seen rather than whether it remembers slices.

Writes, into ``out_dir`` (built in a staging folder beside it and moved into place only when complete):

- ``2d/images``, ``2d/labels``: axial slices (1 mm in-plane) every ``slice_step_mm`` of each subject, class = the
  slice's axial level (0 inferior, 1 middle, 2 superior third of that subject's brain);
- ``3d/images``, ``3d/labels``: one 2 mm volume per subject;
- ``datalist_2d.json`` / ``datalist_3d.json``: MONAI datalists split by subject (``training``, ``validation``,
  ``test``), paths relative to ``out_dir``;
- ``subjects.json``: each subject's split, seed and transform (displacement, volume ratio, gamma, bias, gain).

Labels: 0 background, 1 CSF and other brain, 2 grey matter, 3 white matter.
Run ``python bundle/scripts/synthetic_subjects.py --out_dir bundle/data``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import fire
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

if __package__:
    from .classes import CLASS_RULES, LEVEL_NAMES, volume_classes
    from .files import staged_folder
    from .planes import labelled_planes, plane_affine
else:  # run as a file: python bundle/scripts/synthetic_subjects.py
    from classes import CLASS_RULES, LEVEL_NAMES, volume_classes
    from files import staged_folder
    from planes import labelled_planes, plane_affine

LABEL_NAMES = ("background", "csf_and_other_brain", "grey_matter", "white_matter")
SPLITS = ("training", "validation", "test")
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
SOURCE = "MNI ICBM 152 2009a nonlinear symmetric template, from nilearn (see bundle/docs/data_license.txt)"
INTENSITY_SCALE = 1000.0  # the template's [0, 1] stored as integer MR-like units
BRAIN_THRESHOLD = 0.2  # brain = T1 above this fraction of its maximum (nilearn's load_mni152_brain_mask)
MARGIN = 12  # voxels (mm) kept around the brain's bounding box: room for the transforms
VOLUME_SPACING = 2  # mm, the 3D volumes' voxel size (2 x 2 x 2 averaging of the 1 mm grid)


def nilearn_template_dir() -> str:
    """The folder where nilearn keeps its MNI152 files (found without importing nilearn, which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed: it ships the MNI152 template the data are built from")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data")


def load_template(template_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads the template's T1 and grey/white-matter probability files from ``template_dir``.

    Returns (t1 in [0, 1], gm, wm, affine) on the 1 mm template grid (X, Y, Z); each unreadable file is named.
    """
    arrays, affine = {}, None
    for key, name in TEMPLATE_FILES.items():
        path = os.path.join(template_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MNI152 template file not found: {path}")
        try:
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # nibabel raises several types for truncated or corrupt files
            raise ValueError(f"MNI152 template file {path} cannot be read: {e}") from e
        if affine is not None and (data.shape != arrays["t1"].shape or not np.allclose(img.affine, affine)):
            raise ValueError(f"MNI152 template file {path} is not on the T1 template's grid")
        arrays[key], affine = data / max(float(data.max()), 1e-6), img.affine
    return arrays["t1"], arrays["gm"], arrays["wm"], affine


def tissue_labels(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Tissue label map from a brain mask and grey/white-matter probabilities (all the same shape).

    Inside the brain each voxel takes the most probable of CSF/other (1 - gm - wm), grey (gm) and white (wm)
    matter; outside it is background. Returns uint8 labels 0..3.
    """
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8) + 1
    return np.where(brain, tissue, 0).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, channels: int, control: tuple, shape: tuple) -> torch.Tensor:
    """A smooth random field (1, channels, *shape), unit std at the control points, interpolated between them
    (trilinear, then a small box blur that removes the kinks)."""
    coarse = torch.from_numpy(rng.standard_normal((1, channels, *control)).astype(np.float32))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return F.avg_pool3d(field, 5, stride=1, padding=2, count_include_pad=False)


def _grid(shape: tuple) -> torch.Tensor:
    """Voxel coordinates (1, 3, *shape) of a grid, as float."""
    return torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))[None]


def _sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` (1, C, X, Y, Z) at voxel coordinates ``coords`` (1, 3, *out); border
    values outside (the background is 0 there)."""
    size = torch.tensor(volume.shape[2:], dtype=torch.float32).view(1, 3, *[1] * (coords.dim() - 2))
    norm = (2 * coords / (size - 1) - 1).flip(1)  # grid_sample wants (x, y, z) = (W, H, D) order, in [-1, 1]
    return F.grid_sample(volume, norm.movedim(1, -1), mode="bilinear", padding_mode="border", align_corners=True)


def diffeomorphic_displacement(
    rng: np.random.Generator, shape: tuple, max_displacement: float, control_spacing: int = 20, squarings: int = 6
) -> torch.Tensor:
    """A random smooth invertible displacement (1, 3, *shape) in voxels, largest magnitude ``max_displacement``:
    a stationary velocity field on a 4-voxel working grid, integrated by scaling and squaring, upsampled."""
    work = tuple(max(4, s // 4) for s in shape)
    control = tuple(max(3, s // control_spacing + 2) for s in shape)
    velocity = _smooth_field(rng, 3, control, work)
    velocity = velocity * (max_displacement / 4) / velocity.norm(dim=1).max()  # in working-grid voxels
    grid = _grid(work)
    u = velocity / 2**squarings
    for _ in range(squarings):  # u(x) <- u(x) + u(x + u(x)): the flow's time doubles each time
        u = u + _sample(u, grid + u)
    return F.interpolate(u * 4, size=shape, mode="trilinear", align_corners=True)


def random_subject_transform(rng: np.random.Generator, shape: tuple, max_displacement_mm: float) -> dict:
    """Draws one subject's transform: the source coordinates (1, 3, *shape) to sample the template at, and the
    intensity changes. Rotations up to 6 degrees, per-axis scaling 0.97-1.03, translation up to 3 mm."""
    angles = np.deg2rad(rng.uniform(-6, 6, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ r
    scale = rng.uniform(0.97, 1.03, 3)
    matrix = torch.from_numpy((rotation @ np.diag(1 / scale)).astype(np.float32))
    centre = torch.tensor([(s - 1) / 2 for s in shape]).view(1, 3, 1, 1, 1)
    shift = torch.from_numpy(rng.uniform(-3, 3, 3).astype(np.float32)).view(1, 3, 1, 1, 1)
    grid = _grid(shape)
    affine = torch.einsum("ij,bjxyz->bixyz", matrix, grid - centre) + centre + shift
    displacement = diffeomorphic_displacement(rng, shape, max_displacement_mm)
    return {
        "coords": affine + displacement,
        "max_displacement_mm": float(displacement.norm(dim=1).max()),
        "rms_displacement_mm": float(displacement.norm(dim=1).pow(2).mean().sqrt()),
        "rotation_deg": np.rad2deg(angles).round(2).tolist(),
        "scale": scale.round(4).tolist(),
        "gamma": float(rng.uniform(0.75, 1.35)),
        "gain": float(rng.uniform(0.85, 1.15)),
        "bias": _smooth_field(rng, 1, (3, 3, 3), shape)[0, 0] * 0.1,
    }


def make_subject(template: dict, rng: np.random.Generator, max_displacement_mm: float) -> tuple[dict, dict]:
    """One synthetic subject on the cropped 1 mm template grid.

    Returns ({"t1": image (X, Y, Z) float32 in data units, "probabilities": (4, X, Y, Z) background/other/gm/wm
    fractions}, a JSON-able description of the transform).
    """
    shape = template["t1"].shape
    xf = random_subject_transform(rng, shape, max_displacement_mm)
    stacked = torch.from_numpy(np.stack([template[k] for k in ("t1", "gm", "wm", "brain")]))[None]
    t1, gm, wm, brain = _sample(stacked, xf["coords"])[0]
    brain = brain.clamp(0, 1)
    gm, wm = gm.clamp(0, 1) * brain, wm.clamp(0, 1) * brain
    other = (brain - gm - wm).clamp(min=0)
    image = INTENSITY_SCALE * xf["gain"] * torch.exp(xf["bias"]) * t1.clamp(0, 1) ** xf["gamma"]
    image = torch.where(brain > 0.5, image, torch.zeros(()))
    probabilities = torch.stack([1 - brain, other, gm, wm])
    info = {k: v for k, v in xf.items() if k not in ("coords", "bias")}
    info["bias_range"] = [round(float(torch.exp(xf["bias"]).min()), 3), round(float(torch.exp(xf["bias"]).max()), 3)]
    info["brain_volume_ratio"] = round(float((brain > 0.5).sum()) / float((template["brain"] > 0.5).sum()), 4)
    return {"t1": image.numpy(), "probabilities": probabilities.numpy()}, info


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Labels (uint8, *spatial) from background/other/gm/wm fractions (4, *spatial): background where the brain
    fraction is below one half, else the most probable tissue (as ``tissue_labels``)."""
    brain = probabilities[0] < 0.5
    return tissue_labels(brain, probabilities[2], probabilities[3])


def _save(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _write_subject(out_dir: str, name: str, subject: dict, affine: np.ndarray, slice_step: int, min_brain: float):
    """Writes one subject's axial slices and 2 mm volume; returns (2D cases, 3D case)."""
    labels = labels_from_probabilities(subject["probabilities"])
    image = subject["t1"].round().astype(np.int16)
    _, levels = volume_classes(CLASS_RULES["axial_level"], labels, affine)
    cases = []
    for z in labelled_planes(labels, 2, slice_step, min_brain):
        slice_affine = plane_affine(affine, 2, z)
        file = f"{name}_z-{z:03d}.nii.gz"
        _save(image[:, :, z], slice_affine, os.path.join(out_dir, "2d/images", file))
        _save(labels[:, :, z], slice_affine, os.path.join(out_dir, "2d/labels", file))
        cases.append(
            {
                "image": f"2d/images/{file}",
                "label": f"2d/labels/{file}",
                "class": levels[z],
                "subject": name,
            }
        )
    k = VOLUME_SPACING
    crop = tuple(slice(0, s - s % k) for s in image.shape)
    pool = torch.nn.AvgPool3d(k)
    coarse_image = pool(torch.from_numpy(subject["t1"][crop])[None])[0].numpy().round().astype(np.int16)
    coarse_labels = labels_from_probabilities(
        pool(torch.from_numpy(subject["probabilities"][(slice(None), *crop)])).numpy()
    )
    coarse_affine = affine @ np.diag([k, k, k, 1.0])
    coarse_affine[:3, 3] += affine[:3, :3] @ np.full(3, (k - 1) / 2)  # a coarse voxel's centre is its block's centre
    _save(coarse_image, coarse_affine, os.path.join(out_dir, "3d/images", f"{name}.nii.gz"))
    _save(coarse_labels, coarse_affine, os.path.join(out_dir, "3d/labels", f"{name}.nii.gz"))
    return cases, {"image": f"3d/images/{name}.nii.gz", "label": f"3d/labels/{name}.nii.gz", "subject": name}


def cropped_template(template_dir: str) -> tuple[dict, np.ndarray]:
    """The template cropped to its brain's bounding box plus ``MARGIN``: ({t1, gm, wm, brain} arrays, affine)."""
    t1, gm, wm, affine = load_template(template_dir)
    brain = t1 > BRAIN_THRESHOLD
    lo = np.maximum(np.argwhere(brain).min(0) - MARGIN, 0)
    hi = np.minimum(np.argwhere(brain).max(0) + MARGIN + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    arrays = {"t1": t1[box], "gm": gm[box], "wm": wm[box], "brain": brain[box].astype(np.float32)}
    offset = np.eye(4)
    offset[:3, 3] = lo
    return arrays, affine @ offset


def subject_volume(data_dir: str, split: str = "test", index: int = 0) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A built data set's 3D image and label volume of one subject (the first test subject by default)."""
    with open(os.path.join(data_dir, "datalist_3d.json")) as f:
        case = json.load(f)[split][index]
    return nib.load(os.path.join(data_dir, case["image"])), nib.load(os.path.join(data_dir, case["label"]))


def build(
    out_dir: str = "bundle/data",
    subjects: tuple[int, int, int] = (24, 4, 4),
    seed: int = 0,
    max_displacement_mm: float = 6.0,
    slice_step_mm: int = 3,
    min_brain_fraction: float = 0.05,
    template_dir: str | None = None,
) -> str:
    """Writes the synthetic-subject data set to ``out_dir`` (replacing it) and returns the folder.

    Args:
        out_dir: destination; written in a staging folder beside it, moved into place only when complete.
        subjects: how many (training, validation, test) subjects.
        seed: the data set is a function of the seed (and the template).
        max_displacement_mm: largest displacement of a subject's deformation.
        slice_step_mm: distance between a subject's 2D slices.
        min_brain_fraction: 2D slices whose brain covers less of the slice are left out.
        template_dir: folder with the MNI152 files (default: nilearn's).
    """
    subjects = tuple(int(n) for n in subjects)
    if len(subjects) != 3 or min(subjects) < 1:
        raise ValueError(f"subjects must give (training, validation, test) counts of at least 1, got {subjects}")
    start = time.perf_counter()
    template, affine = cropped_template(template_dir or nilearn_template_dir())
    out_dir = os.path.abspath(out_dir)
    with staged_folder(out_dir) as staging:
        lists2d = {split: [] for split in SPLITS}
        lists3d = {split: [] for split in SPLITS}
        record = {
            "seed": seed,
            "max_displacement_mm": max_displacement_mm,
            "slice_step_mm": slice_step_mm,
            "source": SOURCE,
            "subjects": [],
        }
        names = [(split, i) for split, n in zip(SPLITS, subjects) for i in range(n)]
        for number, (split, _) in enumerate(tqdm(names, desc="subjects", unit="subject")):
            name = f"sub-{number:02d}"
            rng = np.random.default_rng([seed, number])
            subject, info = make_subject(template, rng, max_displacement_mm)
            cases, volume = _write_subject(staging, name, subject, affine, slice_step_mm, min_brain_fraction)
            lists2d[split] += cases
            lists3d[split].append(volume)
            record["subjects"].append({"name": name, "split": split, "slices": len(cases), **info})
        meta = {"source": SOURCE, "labels": dict(enumerate(LABEL_NAMES)), "seed": seed}
        description = "synthetic subjects (random deformation, affine, bias, contrast) of the MNI152 template"
        contents = {
            "datalist_2d.json": {
                "description": f"axial slices every {slice_step_mm} mm of {description}; class = axial level "
                + "/".join(LEVEL_NAMES),
                **meta,
                **lists2d,
            },
            "datalist_3d.json": {"description": f"{VOLUME_SPACING} mm volumes of {description}", **meta, **lists3d},
            "subjects.json": record,
        }
        for name, content in contents.items():
            with open(os.path.join(staging, name), "w") as f:
                json.dump(content, f, indent=1)
    counts = {k: f"{n} subjects, {len(lists2d[k])} slices" for k, n in zip(SPLITS, subjects)}
    print(f"data written to {out_dir} in {time.perf_counter() - start:.0f} s: {counts}")
    return out_dir


if __name__ == "__main__":
    fire.Fire(build)
