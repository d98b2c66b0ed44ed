"""Data in and out: datalists, the transforms that bring any image to the model's grid and intensity range,
and the way back to the source's own grid and units.

A datalist is MONAI's decathlon JSON: ``training`` / ``validation`` / ``test`` lists of
``{"image": ..., "label": ..., "class": ...}`` (label and class optional), paths relative to ``dataset_dir``.
Images are NIfTI files or DICOM series folders, read by MONAI's ``LoadImage`` through ``ReadImage``: a file that
cannot be read (truncated, damaged) is a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, list_data_collate
from monai.transforms import (
    AsDiscreted,
    Compose,
    LoadImage,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandSpatialCropd,
    ResampleToMatch,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentiles,
    SpatialPadd,
)
from monai.utils import convert_to_tensor

from .planes import plane_affine, take_plane

KEYS = ("image", "label")
# training augmentations: "affine" (flip + small rotation/scaling, resampled bilinearly: low-passes the targets),
# "flip_shift" (flip + integer shifts: no resampling, targets stay as sharp as the data), "flip", "none"
AUGMENTATIONS = ("none", "flip", "flip_shift", "affine")
MAX_SHIFT = 4  # pixels (voxels) of "flip_shift"
MODEL_RANGE = (-1.0, 1.0)  # intensities the model sees
PERCENTILES = (0.5, 99.5)  # the robust intensity range of images


def load_cases(
    datalist: str,
    split: str,
    dataset_dir: str | None = None,
    use_mask: bool = False,
    num_classes: int = 0,
    require_image: bool = True,
) -> list[dict]:
    """Reads one split of a datalist and checks it against the variant (``check_cases``); every problem names its
    file. Returns the cases with absolute paths, each with its position in the split as ``index`` and a unique
    ``id``."""
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"datalist not found: {datalist}")
    try:
        with open(datalist) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist {datalist} is not valid JSON: {e}") from e
    if not isinstance(content, dict) or not isinstance(content.get(split), list):
        have = [k for k, v in content.items() if isinstance(v, list)] if isinstance(content, dict) else []
        raise ValueError(f"datalist {datalist} has no '{split}' list (it has {have})")
    if not content[split]:
        raise ValueError(f"the '{split}' list of datalist {datalist} is empty")
    base = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(datalist))
    items = [{"image": item} if isinstance(item, str) else dict(item) for item in content[split]]
    for item in items:
        item.update({key: os.path.normpath(os.path.join(base, item[key])) for key in KEYS if key in item})
    return check_cases(items, f"of '{split}' in {datalist}", use_mask, num_classes, require_image)


def check_cases(
    items: Sequence[dict], where: str, use_mask: bool = False, num_classes: int = 0, require_image: bool = True
) -> list[dict]:
    """Checks cases ``{"image"?, "label"?: absolute path, "class"?, ...}`` against the variant (files exist, a
    label where the model takes a mask, a class in range where it takes a class) and gives each its position
    ``index`` and a unique ``id``; problems name case ``i`` ``where`` (e.g. "of 'test' in datalist.json")."""
    cases, ids = [], set()
    for index, item in enumerate(items):
        at = f"case {index} {where}"
        item = dict(item)
        for key in KEYS:
            if key in item and not os.path.exists(item[key]):
                raise FileNotFoundError(f"{at}: {key} file not found: {item[key]}")
        if require_image and "image" not in item:
            raise ValueError(f"{at} has no 'image'")
        if use_mask and "label" not in item:
            raise ValueError(f"{at} has no 'label', but this variant is conditioned on a mask")
        if num_classes:
            if "class" not in item:
                raise ValueError(f"{at} has no 'class', but this variant is conditioned on a class")
            if not isinstance(item["class"], int) or not 0 <= item["class"] < num_classes:
                raise ValueError(f"{at}: class {item['class']!r} is out of range 0..{num_classes - 1}")
        item["index"] = index
        item["id"] = item.get("id") or case_id(item, index, ids)
        ids.add(item["id"])
        cases.append(item)
    return cases


def case_id(item: Mapping, index: int, taken: set[str]) -> str:
    """A file-name-safe id for a case: its label's or image's file name, made unique with the index."""
    source = item.get("label", item.get("image"))
    name = os.path.basename(os.path.normpath(source)) if source else f"sample_{index:04d}"
    for ext in (".nii.gz", ".nii", ".dcm"):
        name = name.removesuffix(ext)
    name = name if name not in taken else f"{name}_{index:04d}"
    taken.add(name)
    return name


class ReadImage(LoadImage):
    """MONAI's ``LoadImage``; a file it cannot read (truncated, not an image, a damaged DICOM series) raises
    ValueError naming the file and the reason, whatever the reader raised."""

    def __call__(self, filename, reader=None):
        try:
            return super().__call__(filename, reader)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"{filename}: cannot read image ({type(e).__name__}: {reason})") from e


class ReadImaged(LoadImaged):
    """MONAI's ``LoadImaged`` reading with ``ReadImage``: images only, no separate meta dictionaries."""

    def __init__(self, keys: KeysCollection, ensure_channel_first: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, image_only=True, allow_missing_keys=allow_missing_keys)
        self._loader = ReadImage(image_only=True, ensure_channel_first=ensure_channel_first)


class TakePlaned(MapTransform):
    """Of a case that names a ``plane`` and ``axis`` of a loaded volume (1, X, Y, Z), keeps that plane (1, *two
    other axes) as a 2D image whose affine, original affine and shape are the plane's (``planes.plane_affine``),
    so it goes back to its own place in the volume; other cases pass unchanged."""

    def __init__(self, keys: KeysCollection = KEYS) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if "plane" not in d:
            return d
        for key in self.key_iterator(d):
            volume = d[key]
            if volume.ndim != 4:
                continue
            plane, axis = int(d["plane"]), int(d["axis"])
            affine = plane_affine(np.asarray(volume.meta["original_affine"]), axis, plane)
            array = torch.as_tensor(take_plane(volume.as_tensor(), axis + 1, plane))
            meta = {**volume.meta, "original_affine": affine, "spatial_shape": np.array(array.shape[1:])}
            d[key] = MetaTensor(array, affine=torch.as_tensor(affine), meta=meta)
        return d


def percentile_range(
    cases: Sequence[Mapping], lower: float = PERCENTILES[0], upper: float = PERCENTILES[1], max_cases: int = 64
):
    """Robust intensity range [p_lower, p_upper] over (up to ``max_cases``, evenly spread) training images."""
    load = ReadImaged("image")
    picks = np.linspace(0, len(cases) - 1, min(len(cases), max_cases)).round().astype(int)
    values = np.concatenate([np.asarray(load({"image": cases[i]["image"]})["image"]).ravel() for i in picks])
    lo, hi = np.percentile(values, [lower, upper])
    if not hi > lo:
        raise ValueError(f"training images have no intensity spread (p{lower}={lo}, p{upper}={hi})")
    return [float(lo), float(hi)]


class CheckInputd(MapTransform):
    """Checks a loaded case against the model: dimensionality, one channel, label values and grid."""

    def __init__(self, spatial_dims: int, num_labels: int, keys: Sequence[Hashable] = KEYS) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.spatial_dims, self.num_labels = spatial_dims, num_labels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img, name = d[key], d[key].meta.get("filename_or_obj", key)
            if img.ndim - 1 != self.spatial_dims:
                raise ValueError(
                    f"{name}: expected a {self.spatial_dims}D {key}, got spatial shape {tuple(img.shape[1:])}"
                )
            if img.shape[0] != 1:
                raise ValueError(f"{name}: expected a single-channel {key}, got {img.shape[0]} channels")
        if "label" in d and self.num_labels:
            values = torch.unique(d["label"])
            bad = [int(v) if v == int(v) else v for v in values.tolist() if v != int(v) or not 0 <= v < self.num_labels]
            if bad:
                raise ValueError(
                    f"{d['label'].meta.get('filename_or_obj')}: label values {bad[:5]} are outside the "
                    f"configured set 0..{self.num_labels - 1}"
                )
        if "image" in d and "label" in d and d["image"].shape[1:] != d["label"].shape[1:]:
            raise ValueError(
                f"{d['label'].meta.get('filename_or_obj')}: label grid {tuple(d['label'].shape[1:])} does not "
                f"match its image {d['image'].meta.get('filename_or_obj')} {tuple(d['image'].shape[1:])}"
            )
        return d


def input_transforms(
    image_size: Sequence[int],
    num_labels: int,
    intensity_range: Sequence[float] | None,
    augment: str = "none",
    resize: bool = True,
    patch_size: Sequence[int] | None = None,
) -> Compose:
    """Loads a case's files (image, label; both optional) and applies ``model_transforms``, in one flat ``Compose``
    so that a ``CacheDataset`` caches everything before the first random transform."""
    load = ReadImaged(KEYS, ensure_channel_first=True, allow_missing_keys=True)
    xforms = model_transforms(image_size, num_labels, intensity_range, augment, resize, patch_size)
    return Compose([load, TakePlaned(), *xforms.transforms])


def model_transforms(
    image_size: Sequence[int],
    num_labels: int,
    intensity_range: Sequence[float] | None,
    augment: str = "none",
    resize: bool = True,
    patch_size: Sequence[int] | None = None,
) -> Compose:
    """Brings loaded MetaTensors {image?, label?} (C, *spatial) to the model: check, orient (RAS), resize the
    longest side to the model's and pad/crop to ``image_size``, scale intensities from ``intensity_range`` to
    [-1, 1] (clipped). ``augment`` (training only) is one of ``AUGMENTATIONS``.

    ``resize=False`` keeps the data's own voxels (no resampling: e.g. an autoencoder at the native 2 mm grid) and
    only pads/crops them to ``image_size``; ``patch_size`` (training only) then takes a random patch of that size
    after the augmentation.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    spatial_dims = len(image_size)
    linear = "bilinear" if spatial_dims == 2 else "trilinear"
    # labels are resampled as one-hot maps with the image's own interpolation and anti-aliasing, then argmax'd:
    # each label lands exactly where the image structure it labels does, at any scale (nearest-neighbour modes
    # are off by up to half an input pixel). Without a label count (unconditional models) labels are only
    # geometry references, resized by "nearest-exact".
    label_mode = linear if num_labels else "nearest-exact"
    xforms = [
        CheckInputd(spatial_dims, num_labels),
        Orientationd(KEYS, axcodes="RAS"[:spatial_dims], allow_missing_keys=True),
    ]
    if num_labels:
        xforms.append(AsDiscreted("label", to_onehot=num_labels, allow_missing_keys=True))
    if resize:
        xforms.append(
            Resized(
                KEYS,
                max(image_size),
                size_mode="longest",
                mode=(linear, label_mode),
                anti_aliasing=(True, bool(num_labels)),
                allow_missing_keys=True,
            )
        )
    xforms.append(ResizeWithPadOrCropd(KEYS, tuple(image_size), allow_missing_keys=True))
    if augment != "none":
        xforms.append(RandFlipd(KEYS, prob=0.5, spatial_axis=0, allow_missing_keys=True))
    if augment == "flip_shift":
        padded = [s + 2 * MAX_SHIFT for s in image_size]
        xforms += [
            SpatialPadd(KEYS, padded, mode="edge", allow_missing_keys=True),
            RandSpatialCropd(KEYS, tuple(image_size), random_size=False, allow_missing_keys=True),
        ]
    if augment == "affine":
        xforms.append(
            RandAffined(
                KEYS,
                prob=0.5,
                rotate_range=[0.1] * (1 if spatial_dims == 2 else 3),
                scale_range=0.05,
                mode=(linear, linear if num_labels else "nearest"),  # grid_sample's nearest is centre-aligned
                padding_mode="border",
                allow_missing_keys=True,
            )
        )
    if patch_size is not None:
        xforms.append(RandSpatialCropd(KEYS, tuple(patch_size), random_size=False, allow_missing_keys=True))
    if num_labels:
        xforms.append(AsDiscreted("label", argmax=True, allow_missing_keys=True))
    if intensity_range is not None:
        xforms.append(ScaleIntensityRanged("image", *intensity_range, *MODEL_RANGE, clip=True, allow_missing_keys=True))
    return Compose(xforms)


def to_model_range(images: torch.Tensor, intensity_range: Sequence[float] | None) -> torch.Tensor:
    """Images (N, C, *spatial) in data units -> [-1, 1] (clipped): from ``intensity_range``, or, when it is None,
    from each image's own ``PERCENTILES``."""
    if intensity_range is not None:
        return ScaleIntensityRange(*intensity_range, *MODEL_RANGE, clip=True)(images)
    scale = ScaleIntensityRangePercentiles(*PERCENTILES, *MODEL_RANGE, clip=True)
    return torch.stack([scale(image) for image in images])


def to_units(images: torch.Tensor, intensity_range: Sequence[float]) -> torch.Tensor:
    """Model intensities [-1, 1] back to the data's units (the inverse of the input scaling)."""
    return ScaleIntensityRange(*MODEL_RANGE, *intensity_range)(images)


def to_source_grid(image: torch.Tensor, reference: MetaTensor) -> MetaTensor:
    """Resamples a model-grid image (C, *spatial) carrying ``reference``'s model-grid affine onto the grid the
    reference was read from (its original affine and shape), bilinearly.

    Args:
        image: output on the model's grid (C, *image_size).
        reference: the preprocessed mask or image the output was generated for.
    """
    meta = {k: v for k, v in reference.meta.items() if k != "affine"}
    src = MetaTensor(torch.as_tensor(image), affine=reference.affine, meta=meta)
    dst = MetaTensor(
        torch.zeros(1, *[int(s) for s in reference.meta["spatial_shape"]]), affine=reference.meta["original_affine"]
    )
    return ResampleToMatch(mode="bilinear", padding_mode="border")(src, img_dst=dst)


def load_batch(cases: Sequence[dict], transforms) -> dict:
    """Transforms and collates a few cases into one batch (e.g. the fixed cases of training previews)."""
    return list_data_collate([transforms(case) for case in cases])


def load_images(cases: Sequence[dict], transforms, key: str = "image", batch: int = 64) -> torch.Tensor:
    """The ``key`` of every case, transformed and stacked as a plain tensor: (N, C, *image_size)."""
    parts = [load_batch(cases[i : i + batch], transforms)[key] for i in range(0, len(cases), batch)]
    return convert_to_tensor(torch.cat(parts), track_meta=False)
