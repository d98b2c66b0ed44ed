"""Converters from public data sets a user brings to this project's datalist format (see bundle/docs/datasets.md).

- ``msd_brain``: Medical Segmentation Decathlon Task01 BrainTumour -> one MR modality with its tumour labels, as
  3D volumes (no class) or as axial 2D slices with brain (class 1 if the slice holds tumour, else 0);
- ``brats``: BraTS 2021+/2023 glioma (``BraTS-GLI-XXXXX-XXX/`` folders) -> one modality with its tumour labels
  remapped to 0..3 (``BRATS_LABEL_MAP``), as volumes or axial slices (as ``msd_brain``);
- ``camus``: CAMUS echocardiography -> the 2D ED/ES frames of the 2- and 4-chamber views with their masks
  (class = view x phase).

Each writes ``images/``, ``labels/`` and ``datalist.json``: ``training`` / ``validation`` / ``test`` lists of
``{"image", "label", "class"}`` relative to the output folder, with ``labels`` and ``classes`` name maps. Splits are
by patient, so the slices or frames of one patient never cross splits. Everything is written in a staging folder
beside ``out_dir`` and moved into place only once every case is written; the source is only read.

Run ``python bundle/scripts/convert.py msd_brain --src Task01_BrainTumour --out_dir data/msd_2d --mode 2d`` or
``python bundle/scripts/convert.py camus --src CAMUS_public --out_dir data/camus --min_quality Medium``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence

import fire
import nibabel as nib
import numpy as np
from tqdm import tqdm

if __package__:
    from .files import staged_folder
    from .planes import plane_affine
else:  # run as a file: python bundle/scripts/convert.py
    from files import staged_folder
    from planes import plane_affine

SPLITS = ("training", "validation", "test")
DATALIST = "datalist.json"
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
MSD_CLASSES = ("no_tumour", "tumour")
BRATS_MODALITIES = ("t1n", "t1c", "t2w", "t2f")  # native T1, contrast-enhanced T1, T2, T2-FLAIR
BRATS_LABELS = ("background", "necrotic_tumour_core", "peritumoral_edema", "enhancing_tumour")
# BraTS 2021 labels enhancing tumour 4, BraTS 2023 3 (and has no 4): both become 3, so labels are 0..3
BRATS_LABEL_MAP = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3}
CAMUS_LABELS = ("background", "lv_endocardium", "lv_myocardium", "left_atrium")
CAMUS_VIEWS = ("2CH", "4CH")
CAMUS_PHASES = ("ED", "ES")
CAMUS_CLASSES = tuple(f"{view}_{phase}" for view in CAMUS_VIEWS for phase in CAMUS_PHASES)
CAMUS_QUALITIES = ("poor", "medium", "good")  # Info_*.cfg "ImageQuality", worst to best
CAMUS_SPLIT_FILES = ("subgroup_training.txt", "subgroup_validation.txt", "subgroup_testing.txt")  # in SPLITS order


def split_patients(patients: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assigns each patient to ``training``, ``validation`` or ``test``: a seeded shuffle of the sorted names,
    cut at the cumulative fractions (rounded). The same names, fractions and seed always give the same split.

    Args:
        patients: unique patient (case) names.
        fractions: (training, validation, test) fractions: non-negative, summing to 1.
        seed: seed of the shuffle.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers (training, validation, test) summing to 1, got {fractions}"
        )
    names = sorted(patients)
    cuts = np.round(np.cumsum(fractions) * len(names)).astype(int)
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i]: SPLITS[int(np.searchsorted(cuts, rank, side="right"))] for rank, i in enumerate(order)}


def _check_source(src: str) -> str:
    """The source folder as an absolute path, after checking that it exists and is not empty."""
    src = os.path.realpath(src)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder not found: {src}")
    if not os.listdir(src):
        raise ValueError(f"source folder is empty: {src}")
    return src


@contextlib.contextmanager
def _staging(out_dir: str, src: str, overwrite: bool) -> Iterator[str]:
    """Yields an empty staging folder (with ``images/`` and ``labels/``) that becomes ``out_dir`` when the block
    ends without error (replacing it only with ``overwrite``); see ``staged_folder``."""
    out_dir = os.path.realpath(out_dir)
    if os.path.commonpath([src, out_dir]) in (src, out_dir):
        raise ValueError(f"out_dir {out_dir} must lie outside the source {src} (and not contain it)")
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(f"out_dir already exists: {out_dir} (pass --overwrite to replace it)")
    with staged_folder(out_dir) as staging:
        for sub in ("images", "labels"):
            os.mkdir(os.path.join(staging, sub))
        yield staging


def _require(path: str, hint: str = "") -> str:
    """``path``, after checking that it is a file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}{hint}")
    return path


def _like(array: np.ndarray, affine: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    """A NIfTI image of ``array`` on ``affine`` that keeps ``like``'s header (units, codes), in the array's dtype."""
    header = like.header.copy()
    header.set_data_dtype(array.dtype)
    return type(like)(array, affine, header)


def remap_labels(array: np.ndarray, label_map: Mapping[int, int] | None, path: str) -> np.ndarray:
    """``array`` with each value v replaced by ``label_map[v]`` (None: as it is); a value the map lacks is a
    ValueError naming ``path``."""
    if label_map is None:
        return array
    label_map = {int(k): int(v) for k, v in label_map.items()}
    values = np.unique(array)
    unmapped = [v for v in values.tolist() if v not in label_map]
    if unmapped:
        raise ValueError(f"{path}: label values {unmapped[:5]} are not in the label map {label_map}")
    lookup = np.array([label_map[v] for v in values.tolist()])
    return lookup[np.searchsorted(values, array)]


def _checked_label(
    label: nib.Nifti1Image,
    shape: Sequence[int],
    num_labels: int,
    image_path: str,
    label_map: Mapping[int, int] | None = None,
) -> np.ndarray:
    """The label's array (uint8, shape ``shape``), remapped by ``label_map`` (``remap_labels``), after checking
    its grid against its image's and its values against 0..num_labels-1."""
    path = label.get_filename()
    if tuple(label.shape) != tuple(shape):
        raise ValueError(f"{path}: label shape {tuple(label.shape)} differs from its image {image_path} {tuple(shape)}")
    array = remap_labels(np.asarray(label.dataobj), label_map, path)
    values = np.unique(array)
    bad = values[(values != np.round(values)) | (values < 0) | (values >= num_labels)]
    if bad.size:
        raise ValueError(f"{path}: label values {bad[:5].tolist()} are outside 0..{num_labels - 1}")
    return array.astype(np.uint8)


def _write_pair(
    folder: str, name: str, image: nib.Nifti1Image, label: nib.Nifti1Image, cls: int | None, subject: str
) -> dict:
    """Saves one case's image and label under ``folder`` and returns its datalist item (paths relative to it, and
    the ``subject`` it belongs to, which evaluation uses to split the real set into halves by subject)."""
    item = {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz", "subject": subject}
    nib.save(image, os.path.join(folder, item["image"]))
    nib.save(label, os.path.join(folder, item["label"]))
    return item if cls is None else {**item, "class": cls}


def _write_datalist(folder: str, lists: dict[str, list[dict]], meta: dict) -> None:
    with open(os.path.join(folder, DATALIST), "w") as f:
        json.dump({**meta, **lists}, f, indent=1)


def _report(what: str, lists: dict[str, list[dict]], out_dir: str) -> str:
    """Prints the one-line summary of a conversion and returns the datalist's path."""
    out_dir = os.path.realpath(out_dir)
    print(f"{what}: " + ", ".join(f"{len(lists[s])} {s}" for s in SPLITS) + f" items written to {out_dir}")
    return os.path.join(out_dir, DATALIST)


def _msd_index(src: str) -> tuple[dict, list[tuple[str, str, str]]]:
    """Reads ``dataset.json`` of an MSD task folder: its content and the labelled cases (name, image, label)."""
    path = _require(os.path.join(src, "dataset.json"), " (is --src the Task01_BrainTumour folder?)")
    with open(path) as f:
        meta = json.load(f)
    if not meta.get("training"):
        raise ValueError(f"{path} lists no training cases")
    cases = []
    for entry in meta["training"]:
        image, label = (_require(os.path.normpath(os.path.join(src, entry[key]))) for key in ("image", "label"))
        cases.append((os.path.basename(image).removesuffix(".nii.gz"), image, label))
    return meta, cases


def _names(mapping: dict, what: str, path: str) -> list[str]:
    """The values of a {"0": name, "1": name, ...} map in index order, checking the indices are 0..N-1."""
    if sorted(int(k) for k in mapping) != list(range(len(mapping))):
        raise ValueError(f"{path}: {what} indices {sorted(mapping)} are not 0..{len(mapping) - 1}")
    return [mapping[str(i)] for i in range(len(mapping))]


def _tumour_pairs(
    name: str, volume: np.ndarray, image: nib.Nifti1Image, seg: np.ndarray, label: nib.Nifti1Image, mode: str
) -> list[tuple]:
    """A tumour case's (name, image, label, class) items: "3d" the volume (X, Y, Z), no class; "2d" its axial
    slices (X, Y) where the image is not all zero, class 1 if the slice holds tumour (label > 0), else 0."""
    if mode == "3d":
        return [(name, _like(volume, image.affine, image), _like(seg, label.affine, label), None)]
    return [
        (
            f"{name}_z{z:03d}",
            _like(volume[:, :, z], plane_affine(image.affine, 2, z), image),
            _like(seg[:, :, z], plane_affine(label.affine, 2, z), label),
            int(seg[:, :, z].any()),
        )
        for z in np.flatnonzero(volume.any(axis=(0, 1))).tolist()
    ]


def msd_brain(
    src: str,
    out_dir: str,
    mode: str = "2d",
    modality: str = "FLAIR",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Converts MSD Task01 BrainTumour (``dataset.json``, ``imagesTr/``, ``labelsTr/``) and returns the datalist.

    Images (X, Y, Z, 4 modalities) become single-channel ``modality`` images; labels (X, Y, Z) keep their values
    (0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour). Cases without labels (``imagesTs/``) are
    not used.

    Args:
        src: the ``Task01_BrainTumour`` folder.
        out_dir: the folder to write (it must not exist unless ``overwrite``).
        mode: "3d": one volume (X, Y, Z) per case, no class; "2d": its axial slices (X, Y) where the image is not
            all zero, class 1 if the slice holds tumour (label > 0), else 0.
        modality: the channel to keep, by its ``dataset.json`` name (FLAIR, T1w, t1gd, T2w; any case).
        fractions: (training, validation, test) fractions of the cases; slices follow their case.
        seed: seed of the split.
        overwrite: replace an existing ``out_dir``.
    """
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    src = _check_source(src)
    with _staging(out_dir, src, overwrite) as folder:
        meta, cases = _msd_index(src)
        json_path = os.path.join(src, "dataset.json")
        modalities = _names(meta.get("modality", {}), "modality", json_path)
        channel = {name.lower(): c for c, name in enumerate(modalities)}.get(str(modality).lower())
        if channel is None:
            raise ValueError(f"unknown modality {modality!r}: {json_path} lists {modalities}")
        label_names = _names(meta.get("labels", {}), "label", json_path)
        split = split_patients([name for name, _, _ in cases], fractions, seed)
        lists = {s: [] for s in SPLITS}
        for name, image_path, label_path in tqdm(cases, desc=f"msd_brain {mode}", unit="case"):
            image = nib.load(image_path)
            if image.ndim != 4 or image.shape[3] != len(modalities):
                raise ValueError(f"{image_path}: expected (X, Y, Z, {len(modalities)}) modalities, got {image.shape}")
            volume = np.asarray(image.dataobj[..., channel])
            label = nib.load(label_path)
            seg = _checked_label(label, volume.shape, len(label_names), image_path)
            pairs = _tumour_pairs(name, volume, image, seg, label, mode)
            lists[split[name]] += [_write_pair(folder, *pair, subject=name) for pair in pairs]
        kind = "axial slices with brain, class 1 if the slice holds tumour" if mode == "2d" else "volumes"
        meta_out = {
            "description": f"MSD Task01 BrainTumour, {modalities[channel]} {kind}",
            "source": f"Medical Segmentation Decathlon Task01 ({meta.get('reference')}), licence {meta.get('licence')}",
            "modality": modalities[channel],
            "labels": dict(enumerate(label_names)),
            **({"classes": dict(enumerate(MSD_CLASSES))} if mode == "2d" else {}),
            "split": f"by case: fractions {list(fractions)}, seed {seed}",
        }
        _write_datalist(folder, lists, meta_out)
    return _report(f"msd_brain {mode} {modalities[channel]}, {len(cases)} cases", lists, out_dir)


def _brats_subjects(src: str, modality: str) -> list[tuple[str, str, str]]:
    """The (name, image, seg) files of every ``BraTS-*`` subject folder of a BraTS 2021+/2023 release."""
    subjects = sorted(d for d in os.listdir(src) if d.startswith("BraTS") and os.path.isdir(os.path.join(src, d)))
    if not subjects:
        raise ValueError(f"no BraTS subject folders (BraTS-GLI-XXXXX-XXX) in {src}")
    return [
        (name, *(_require(os.path.join(src, name, f"{name}-{kind}.nii.gz")) for kind in (modality, "seg")))
        for name in subjects
    ]


def brats(
    src: str,
    out_dir: str,
    mode: str = "2d",
    modality: str = "t1n",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Converts a BraTS 2021+/2023 glioma release (``BraTS-GLI-XXXXX-XXX/`` folders of ``<name>-t1n``, ``-t1c``,
    ``-t2w``, ``-t2f`` and ``-seg.nii.gz``) and returns the datalist.

    Labels are remapped by ``BRATS_LABEL_MAP`` to 0 background, 1 necrotic tumour core, 2 peritumoral edema,
    3 enhancing tumour (2021's 4 and 2023's 3 both become 3); other values are an error naming the file.

    Args:
        src: the folder holding the subject folders.
        out_dir: the folder to write (it must not exist unless ``overwrite``).
        mode: "3d": one volume per subject, no class; "2d": its axial slices where the image is not all zero,
            class 1 if the slice holds tumour, else 0 (as ``msd_brain``).
        modality: one of ``BRATS_MODALITIES``.
        fractions: (training, validation, test) fractions of the subjects; slices follow their subject.
        seed: seed of the split.
        overwrite: replace an existing ``out_dir``.
    """
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    if modality not in BRATS_MODALITIES:
        raise ValueError(f"modality must be one of {list(BRATS_MODALITIES)}, got {modality!r}")
    src = _check_source(src)
    with _staging(out_dir, src, overwrite) as folder:
        subjects = _brats_subjects(src, modality)
        split = split_patients([name for name, _, _ in subjects], fractions, seed)
        lists = {s: [] for s in SPLITS}
        for name, image_path, seg_path in tqdm(subjects, desc=f"brats {mode}", unit="subject"):
            image = nib.load(image_path)
            if image.ndim != 3:
                raise ValueError(f"{image_path}: expected a 3D volume, got shape {image.shape}")
            volume = np.asarray(image.dataobj)
            label = nib.load(seg_path)
            seg = _checked_label(label, volume.shape, len(BRATS_LABELS), image_path, BRATS_LABEL_MAP)
            pairs = _tumour_pairs(name, volume, image, seg, label, mode)
            lists[split[name]] += [_write_pair(folder, *pair, subject=name) for pair in pairs]
        kind = "axial slices with brain, class 1 if the slice holds tumour" if mode == "2d" else "volumes"
        meta_out = {
            "description": f"BraTS glioma, {modality} {kind}",
            "source": "BraTS 2021+/2023 glioma (https://www.synapse.org/brats), see its data use terms",
            "modality": modality,
            "labels": dict(enumerate(BRATS_LABELS)),
            "label_map": {str(k): v for k, v in BRATS_LABEL_MAP.items()},
            **({"classes": dict(enumerate(MSD_CLASSES))} if mode == "2d" else {}),
            "split": f"by subject: fractions {list(fractions)}, seed {seed}",
        }
        _write_datalist(folder, lists, meta_out)
    return _report(f"brats {mode} {modality}, {len(subjects)} subjects", lists, out_dir)


def _read_cfg(path: str) -> dict[str, str]:
    """A CAMUS ``Info_*.cfg`` file ("key: value" lines) as a dict of strings."""
    with open(_require(path)) as f:
        return dict(tuple(part.strip() for part in line.split(":", 1)) for line in f if ":" in line)


def _camus_quality(path: str) -> int:
    """The ImageQuality in an ``Info_*.cfg`` as an index into CAMUS_QUALITIES (0 poor, 1 medium, 2 good)."""
    quality = _read_cfg(path).get("ImageQuality", "").lower()
    if quality not in CAMUS_QUALITIES:
        raise ValueError(f"{path}: ImageQuality {quality!r} is not one of {list(CAMUS_QUALITIES)}")
    return CAMUS_QUALITIES.index(quality)


def _camus_split(src: str, patients: Sequence[str], fractions: Sequence[float], seed: int) -> tuple[dict, str]:
    """The split of each patient: from the official ``database_split/subgroup_*.txt`` files when all three exist,
    else ``split_patients``. Returns the split and how it was made."""
    paths = [os.path.join(src, "database_split", name) for name in CAMUS_SPLIT_FILES]
    if not all(os.path.isfile(p) for p in paths):
        return split_patients(patients, fractions, seed), f"by patient: fractions {list(fractions)}, seed {seed}"
    split = {}
    for name, path in zip(SPLITS, paths):
        with open(path) as f:
            for patient in f.read().split():
                if split.setdefault(patient, name) != name:
                    raise ValueError(f"{path}: {patient} is also listed for {split[patient]}")
    unlisted = [p for p in patients if p not in split]
    if unlisted:
        raise ValueError(f"patients {unlisted[:5]} are in none of the split files {paths}")
    return split, "official (database_split/subgroup_*.txt)"


def camus(
    src: str,
    out_dir: str,
    min_quality: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Converts the CAMUS NIfTI release (``database_nifti/patientNNNN/``) and returns the datalist.

    Each patient's ``{patient}_{2CH|4CH}_{ED|ES}.nii.gz`` image (X, Y) and ``..._gt.nii.gz`` mask (0 background,
    1 LV endocardium, 2 LV myocardium, 3 left atrium) become one case with class 0 2CH_ED, 1 2CH_ES, 2 4CH_ED,
    3 4CH_ES. Half sequences are not used.

    Args:
        src: the CAMUS folder holding ``database_nifti/`` (and optionally ``database_split/``).
        out_dir: the folder to write (it must not exist unless ``overwrite``).
        min_quality: keep only views whose ``Info_{view}.cfg`` ImageQuality is at least this (Poor, Medium, Good);
            None keeps all.
        fractions: (training, validation, test) fractions of the patients, used without the official split files.
        seed: seed of that split.
        overwrite: replace an existing ``out_dir``.
    """
    if min_quality is not None and str(min_quality).lower() not in CAMUS_QUALITIES:
        raise ValueError(f"min_quality must be one of Poor, Medium, Good, got {min_quality!r}")
    src = _check_source(src)
    nifti = os.path.join(src, "database_nifti")
    if not os.path.isdir(nifti):
        raise FileNotFoundError(f"database_nifti folder not found: {nifti} (is --src the CAMUS folder?)")
    with _staging(out_dir, src, overwrite) as folder:
        patients = sorted(p for p in os.listdir(nifti) if re.fullmatch(r"patient\d+", p))
        if not patients:
            raise ValueError(f"no patient folders (patientNNNN) in {nifti}")
        frames = []  # (patient, class, file stem without .nii.gz)
        for patient in patients:
            for v, view in enumerate(CAMUS_VIEWS):
                info = os.path.join(nifti, patient, f"Info_{view}.cfg")
                if min_quality is not None and _camus_quality(info) < CAMUS_QUALITIES.index(min_quality.lower()):
                    continue
                for p, phase in enumerate(CAMUS_PHASES):
                    stem = os.path.join(nifti, patient, f"{patient}_{view}_{phase}")
                    for suffix in (".nii.gz", "_gt.nii.gz"):
                        _require(stem + suffix)
                    frames.append((patient, len(CAMUS_PHASES) * v + p, stem))
        split, how = _camus_split(src, patients, fractions, seed)
        lists = {s: [] for s in SPLITS}
        for patient, cls, stem in tqdm(frames, desc="camus", unit="frame"):
            image, label = nib.load(stem + ".nii.gz"), nib.load(stem + "_gt.nii.gz")
            if image.ndim != 2:
                raise ValueError(f"{stem}.nii.gz: expected a 2D image, got shape {image.shape}")
            seg = _checked_label(label, image.shape, len(CAMUS_LABELS), stem + ".nii.gz")
            pixels = _like(np.asarray(image.dataobj), image.affine, image)
            item = _write_pair(folder, os.path.basename(stem), pixels, _like(seg, label.affine, label), cls, patient)
            lists[split[patient]].append(item)
        meta = {
            "description": "CAMUS 2D echocardiography, ED/ES frames of the 2- and 4-chamber views, class = view x phase"
            + (f", image quality >= {min_quality}" if min_quality is not None else ""),
            "source": "CAMUS, Leclerc et al., IEEE TMI 2019 (https://www.creatis.insa-lyon.fr/Challenge/camus/)",
            "labels": dict(enumerate(CAMUS_LABELS)),
            "classes": dict(enumerate(CAMUS_CLASSES)),
            "split": how,
        }
        _write_datalist(folder, lists, meta)
    return _report(f"camus, {len(patients)} patients, split {how}", lists, out_dir)


if __name__ == "__main__":
    fire.Fire({"msd_brain": msd_brain, "brats": brats, "camus": camus})
