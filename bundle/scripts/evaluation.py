"""Evaluation: compare a generated set (a synthesis output folder) with the real cases it was generated for.

Both sets are read from disk through the same transforms onto the model's grid and scaled to [-1, 1] with the
model card's intensity range, or, when the real images' intensities are far from that range (another scanner, other
units), each image by its own robust percentiles, so no metric reports a unit mismatch as a quality gap.

``metrics.json`` holds, each with a 95% bootstrap interval over cases in ``ci95`` (for the set statistics, FD, KID
and MMD, shifted by the bias that repeated cases in a resample give them: ``metrics.bootstrap_ci``):

- distribution: ``mmd`` (images, linear kernel), ``hist_wasserstein`` (intensities), and in the features of the
  segmenter trained here on the training subjects: ``fd_segmenter_features`` (Frechet distance, all cases),
  ``kid_segmenter_features`` (KID's polynomial-kernel MMD), and ``fd_halves_generated`` against
  ``fd_halves_real``: generated images of one half of the subjects against the real images of the other half,
  beside the two real halves against each other (same sizes, so the same small-sample bias);
- sharpness and texture, which a blurred or averaged image cannot win (the segmenter's features, mask Dice, SSIM
  and PSNR can: the segmenter was trained to find the tissues whatever their texture). Each image is measured inside
  the brain (its mask's label > 0, or the whole image without masks) and scaled by its brain's median,
  so a gain is not blur (``metrics``): ``hf_power_ratio``, the generated images' mean power above a quarter of the
  sampling frequency (radial frequency > 0.25 cycles/pixel, inside the dilated, Hann-tapered brain window) over the
  real images'; ``log_spectral_distance``, the RMS difference of the two sets' mean log10 radially averaged power
  spectra; ``gradient_ratio``, the mean gradient magnitude inside the brain, generated over real; and
  ``fd_texture_features`` / ``kid_texture_features`` in classical texture statistics (``metrics.texture_features``:
  per band of a difference-of-Gaussians pyramid, its energy, kurtosis, grain (correlation a band's scale on) and the
  patchiness of its local energy, plus the structure tensor's orientation coherence; standardised by the real
  set's spread). These describe how intensity varies at each scale, not where the tissues are: blur removes
  the fine bands' energy and raises their correlations, and a mean of several images, whose textures partly cancel,
  loses energy and kurtosis. Each comes with ``{name}_halves_generated`` against ``{name}_halves_real``
  (``log_spectral_distance_halves_...``, ``hf_power_ratio_halves_...``, ``gradient_ratio_halves_...``,
  ``fd_texture_halves_...``), computed like ``fd_halves_...`` below: the real halves' value is how far apart real
  subjects lie (1 for the ratios, 0 for the distances, up to that spread);
- diversity: ``ms_ssim_diversity`` among generated images (and ``ms_ssim_diversity_real``), and
  ``conditional_ms_ssim``: the mean pairwise MS-SSIM of ``diversity_samples`` samples of one condition (1: every
  noise gives the same image); ``contrast_spread``: over the same samples of one mask, the standard deviation of
  the log tissue contrasts (white/grey matter and grey matter/CSF mean-intensity ratios), averaged over the two and
  over the masks, beside ``contrast_spread_real``, the same spread over the real test subjects (each subject's
  log contrasts averaged over its cases, so that the anatomy of a slice's position does not count), and
  ``contrast_spread_ratio``, the first over the second (0: the noise picks no contrast);
- following the condition: ``mask_dice`` (the segmenter on generated images against their masks) beside
  ``mask_dice_real`` (the same segmenter on the real images: the ceiling), ``class_accuracy`` (a classifier
  trained on the training subjects, on generated images against their classes) beside ``class_accuracy_real``,
  ``correlation_in_mask`` (Pearson r with the real image inside the brain), and the paired ``ssim_paired`` /
  ``psnr_paired``, which a mean image wins;
- inter-plane consistency: ``interplane_ratio`` (``metrics.interplane_ratio``: |second difference| along the
  stack axis over in-plane, 1 for an isotropic image, large for planes that disagree) beside
  ``interplane_ratio_real``, the mean over volumes: each 3D output along its last (feet-head) axis, or the stacked 2D
  planes of each subject (``slice_stacks``: cases that name a ``subject``, three or more at a regular step);
- ``fid`` only with a local Inception network (``fid_model``); ``nfe``, ``seconds_per_sample``, the settings,
  and ``model``: the model card's provenance (iterations, data and code fingerprints, training time).

A key the variant cannot have is null, and ``skipped`` says why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from . import downstream, metrics
from .data import PERCENTILES, ReadImage, load_batch, load_cases, load_images, to_model_range
from .files import save_json
from .visualize import save_density

logger = logging.getLogger(__name__)


def _subsample(values: np.ndarray, generator: torch.Generator, points: int = 20000) -> np.ndarray:
    """At most ``points`` of ``values`` (1D), drawn without replacement."""
    return values[torch.randperm(len(values), generator=generator)[:points].numpy()]


def intensity_mismatch(real: torch.Tensor, intensity_range: Sequence[float]) -> str | None:
    """Why the real images' robust range [p0.5, p99.5] is too far from the model's ``intensity_range`` to compare
    in the model's units (width off by more than 2x, or centres more than half a width apart); None if it is not."""
    a, b = np.percentile(real.numpy(), PERCENTILES)
    lo, hi = intensity_range
    width, real_width = hi - lo, b - a
    if not 0.5 <= real_width / width <= 2 or abs((a + b) / 2 - (lo + hi) / 2) > width / 2:
        return (
            f"the real images' p{PERCENTILES[0]}-p{PERCENTILES[1]} range [{a:.4g}, {b:.4g}] is far from the model's "
            f"intensity range [{lo:.4g}, {hi:.4g}]: both sets are compared with each image scaled by its own "
            "percentiles"
        )
    return None


def _ratio_of_means(real: torch.Tensor, generated: torch.Tensor) -> float:
    """The generated cases' mean of a per-case value (N,) over the real cases' (M,)."""
    return float(generated.mean() / real.mean())


def _with_ci(values: dict, name: str, value: float, interval: list[float]) -> None:
    values[name] = value
    values["ci95"][name] = interval


def _set_statistic_with_ci(
    values: dict, name: str, statistic: Callable[[torch.Tensor], float], n: int, draws: int
) -> None:
    """``values[name]``: a statistic of two sets of ``n`` cases, ``statistic(indices)``, on all cases, with its
    bootstrap interval shifted onto that value (``metrics.bootstrap_ci``'s ``centre``) in ``ci95``."""
    value = statistic(torch.arange(n))
    _with_ci(values, name, value, metrics.bootstrap_ci(statistic, n, draws, centre=value))


def _mean_with_ci(values: dict, name: str, per_case: torch.Tensor, draws: int) -> None:
    """``values[name]``: the mean of per-case values (N,), with its bootstrap interval over cases in ``ci95``."""
    _with_ci(values, name, *metrics.mean_with_ci(per_case, draws))


def slice_stacks(cases: Sequence[Mapping], min_slices: int = 3) -> tuple[list[list[int]], str | None]:
    """The 2D cases of each subject as a stack: per subject, the positions of its cases in ``cases``, ordered by the
    slice's offset along its plane's normal (read from its label's or image's header, not from the file order).

    A subject makes a stack when it has ``min_slices`` or more slices of one grid (shape and in-plane axes) at a
    regular step (every gap within 1% of the median gap; a subset such as every 4th slice is still regular).
    Returns (the stacks, None), or ([], why no stack could be formed).
    """
    if not all("subject" in case for case in cases):
        return [], "the cases name no 'subject': no stacks of planes to compare"
    load = ReadImage(image_only=True)
    subjects: dict[str, list[tuple[float, tuple, int]]] = {}
    for i, case in enumerate(cases):
        header = load(case.get("label", case.get("image")))
        affine = np.asarray(header.affine, dtype=np.float64)
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        grid = (tuple(header.shape), *affine[:3, :2].T.round(4).ravel().tolist())
        subjects.setdefault(str(case["subject"]), []).append(
            (float(affine[:3, 3] @ normal / np.linalg.norm(normal)), grid, i)
        )
    stacks, why = [], {}
    for name, slices in subjects.items():
        slices.sort()
        gaps = np.diff([offset for offset, _, _ in slices])
        if len(slices) < min_slices:
            why[name] = f"{len(slices)} slices"
        elif len({grid for _, grid, _ in slices}) > 1:
            why[name] = "slices of different grids"
        elif not (gaps > 0).all() or np.abs(gaps - np.median(gaps)).max() > 0.01 * np.median(gaps):
            why[name] = f"an irregular slice step ({gaps.min():.3g} to {gaps.max():.3g} mm)"
        else:
            stacks.append([i for _, _, i in slices])
    if stacks:
        return stacks, None
    shown = "; ".join(f"{name}: {reason}" for name, reason in list(why.items())[:3])
    return [], f"no subject has {min_slices} or more slices of one grid at a regular step ({shown})"


class Evaluation:
    """Computes the metrics of a generated set against the real cases it was generated for.

    Args:
        output_dir: a synthesis output folder (``datalist.json``, ``info.json``, images); metrics are added to it.
        real_cases: the real cases, in the generated set's order, from ``load_cases``.
        transforms: input transforms onto the model's grid *without* intensity scaling (``input_transforms`` with
            ``intensity_range=None``).
        image_size: the model's spatial shape.
        num_labels: mask labels (0: no mask, so no mask metrics).
        intensity_range: the model card's data range for [-1, 1].
        segmenter_path: the segmenter model file for mask Dice and the feature metrics; None or missing: skipped.
        num_classes: the model's classes (0: none, so no class accuracy).
        classifier_path: the classifier model file for class accuracy; None or missing: skipped.
        fid_model: optional local TorchScript Inception network (images (N, 3, 299, 299) in [0, 1] -> (N, F)).
        device: torch device for the networks.
        network, sampler: the generator, for conditional diversity (None: skipped).
        seed: the seed the set was generated with; conditional diversity draws ``diversity_samples`` further seeds.
        diversity_samples, diversity_cases: samples per condition and how many conditions (evenly spread).
        bootstrap_draws: resamples for the intervals.
        model_card: the generator's card, whose provenance is copied into metrics.json.
    """

    def __init__(
        self,
        output_dir: str,
        real_cases: Sequence[dict],
        transforms: Callable,
        image_size: Sequence[int],
        num_labels: int,
        intensity_range: Sequence[float],
        segmenter_path: str | None = None,
        num_classes: int = 0,
        classifier_path: str | None = None,
        fid_model: str | None = None,
        device: str | torch.device = "cpu",
        network: nn.Module | None = None,
        sampler=None,
        seed: int = 0,
        diversity_samples: int = 4,
        diversity_cases: int = 32,
        bootstrap_draws: int = 200,
        model_card: Mapping | None = None,
    ) -> None:
        self.output_dir, self.real_cases, self.transforms = output_dir, list(real_cases), transforms
        self.image_size, self.num_labels, self.intensity_range = list(image_size), num_labels, list(intensity_range)
        self.segmenter_path, self.fid_model, self.device = segmenter_path, fid_model, device
        self.num_classes, self.classifier_path = num_classes, classifier_path
        self.network, self.sampler, self.seed = network, sampler, seed
        self.diversity_samples, self.diversity_cases, self.draws = diversity_samples, diversity_cases, bootstrap_draws
        self.model_card = dict(model_card or {})

    def run(self) -> dict:
        with open(os.path.join(self.output_dir, "info.json")) as f:
            info = json.load(f)
        generated_cases = load_cases(os.path.join(self.output_dir, "datalist.json"), "training")
        conditioned = any(key in generated_cases[0] for key in ("label", "class"))  # one image per real case
        self._check_match(generated_cases, conditioned)
        real_raw = load_images(self.real_cases, self.transforms)
        mismatch = intensity_mismatch(real_raw, self.intensity_range)
        scale = None if mismatch else self.intensity_range
        real = to_model_range(real_raw, scale)
        generated = to_model_range(load_images(generated_cases, self.transforms), scale)
        values: dict = {
            "num_generated": len(generated),
            "num_real": len(real),
            "normalisation": mismatch or f"the model card's intensity range {self.intensity_range}",
            **{
                key: info.get(key)
                for key in ("nfe", "seconds_per_sample", "device", "solver", "num_steps", "seed", "noise")
            },
            "guidance_scale": info.get("guidance_scale"),
            "skipped": {},
            "ci95": {},
        }
        # generated image i was made from real case i's mask; without masks the whole image is measured
        masks = load_images(self.real_cases, self.transforms, key="label") if self.num_labels else None
        segmenter = self._load_segmenter(values["skipped"])
        self._distribution(values, real, generated, segmenter)
        self._sharpness_and_texture(values, real, generated, torch.ones_like(real) if masks is None else masks)
        self._paired(values, real, generated, masks, segmenter)
        self._class_accuracy(values, real, generated)
        self._conditional_diversity(values, real, masks)
        self._interplane(values, real, generated, conditioned)
        values["fid"] = self._fid(real, generated, values["skipped"])
        values["model"] = self.model_card.get("provenance", {})
        draws = torch.Generator().manual_seed(0)
        save_density(
            os.path.join(self.output_dir, "intensity_kde.png"),
            {
                name: _subsample(metrics.intensity_values(x), draws)
                for name, x in (("real", real), ("generated", generated))
            },
            "intensity (model range)",
            np.linspace(-1, 1, 400),
        )
        save_json(values, os.path.join(self.output_dir, "metrics.json"))
        shown = ("mask_dice", "mask_dice_real", "fd_halves_generated", "fd_halves_real", "conditional_ms_ssim")
        logger.info("metrics: " + ", ".join(f"{k}={values.get(k)}" for k in shown))
        return values

    def _check_match(self, generated_cases: list[dict], conditioned: bool) -> None:
        """Refuses a generated set that is not one image per real case, by id and on the real case's grid."""
        where = f"generated set {self.output_dir}"
        if len(generated_cases) != len(self.real_cases):
            raise ValueError(f"{where} holds {len(generated_cases)} cases for {len(self.real_cases)} real ones")
        if not conditioned:
            return
        load = ReadImage(image_only=True)
        for gen, real in zip(generated_cases, self.real_cases):
            name = os.path.basename(gen["image"]).removesuffix(".nii.gz")
            if name != real["id"]:
                raise ValueError(f"{where}: case {gen['image']} stands where real case {real['id']} is expected")
            reference = real.get("label", real.get("image"))
            a, b = load(gen["image"]), load(reference)
            if a.shape != b.shape or not np.allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-3):
                raise ValueError(
                    f"{where}: {gen['image']} (shape {tuple(a.shape)}) is not on the grid of {reference} "
                    f"(shape {tuple(b.shape)})"
                )

    def _distribution(
        self, values: dict, real: torch.Tensor, generated: torch.Tensor, segmenter: nn.Module | None
    ) -> None:
        n, draws = len(real), self.draws
        _set_statistic_with_ci(values, "mmd", lambda i: metrics.mmd(real[i], generated[i]), n, draws)
        values["hist_wasserstein"] = metrics.hist_wasserstein(real, generated)
        values["ms_ssim_diversity"] = metrics.ms_ssim_diversity(generated)
        values["ms_ssim_diversity_real"] = metrics.ms_ssim_diversity(real)
        keys = ("fd_segmenter_features", "kid_segmenter_features", "fd_halves_generated", "fd_halves_real")
        if segmenter is None:
            values.update(dict.fromkeys(keys))
            return
        f_real, f_gen = (downstream.segmenter_features(segmenter, x.to(self.device)) for x in (real, generated))
        self._compare(values, "fd_segmenter_features", metrics.frechet_distance, f_real, f_gen, "fd_halves")
        self._compare(values, "kid_segmenter_features", partial(metrics.mmd, kernel="polynomial"), f_real, f_gen)

    def _sharpness_and_texture(
        self, values: dict, real: torch.Tensor, generated: torch.Tensor, masks: torch.Tensor
    ) -> None:
        """The power spectrum (``hf_power_ratio``, ``log_spectral_distance``), ``gradient_ratio`` and the texture
        features' FD and KID, on images and label maps (N, 1, *spatial); see the module's docstring."""
        spectra = [metrics.radial_power_spectra(x, masks)[0] for x in (real, generated)]
        self._compare(
            values, "log_spectral_distance", metrics.log_spectral_distance, *spectra, "log_spectral_distance_halves"
        )
        for key, measure in (
            ("hf_power_ratio", metrics.high_frequency_power),
            ("gradient_ratio", metrics.gradient_magnitude),
        ):
            self._compare(
                values, key, _ratio_of_means, measure(real, masks), measure(generated, masks), f"{key}_halves"
            )
        f_real, f_gen = (metrics.texture_features(x, masks) for x in (real, generated))
        f_real, f_gen = metrics.standardised(f_real, f_real), metrics.standardised(f_gen, f_real)
        self._compare(values, "fd_texture_features", metrics.frechet_distance, f_real, f_gen, "fd_texture_halves")
        self._compare(values, "kid_texture_features", partial(metrics.mmd, kernel="polynomial"), f_real, f_gen)

    def _compare(
        self,
        values: dict,
        key: str,
        statistic: Callable[[torch.Tensor, torch.Tensor], float],
        real: torch.Tensor,
        generated: torch.Tensor,
        halves: str | None = None,
    ) -> None:
        """``values[key]``: ``statistic(real, generated)`` of per-case values (N, ...) on all cases, with its
        interval; with ``halves``, ``{halves}_generated`` (generated cases of one half of the subjects against the
        real cases of the other) beside ``{halves}_real`` (the two real halves), each the mean of both ways round:
        the same sizes, so the same small-sample bias, and the real halves' value is how far apart real subjects lie
        (for a ratio r, (r + 1/r) / 2, at least 1)."""
        _set_statistic_with_ci(values, key, lambda i: statistic(real[i], generated[i]), len(real), self.draws)
        if halves is None:
            return
        a, b = self._halves()
        if min(len(a), len(b)) < 2:
            values[f"{halves}_generated"] = values[f"{halves}_real"] = None
            values["skipped"][halves] = f"halves of {len(a)} and {len(b)} cases: two or more each are needed"
            return
        values[f"{halves}_generated"] = (statistic(real[b], generated[a]) + statistic(real[a], generated[b])) / 2
        values[f"{halves}_real"] = (statistic(real[b], real[a]) + statistic(real[a], real[b])) / 2

    def _subjects(self) -> list:
        """Each real case's subject, or its position where cases name none (each case its own subject)."""
        return [c.get("subject", i) for i, c in enumerate(self.real_cases)]

    def _halves(self) -> tuple[list[int], list[int]]:
        """Two halves of the real cases: by subject when cases name one (alternate subjects), else alternate cases."""
        subjects = self._subjects()
        first = set(list(dict.fromkeys(subjects))[0::2])
        in_first = [s in first for s in subjects]
        return [i for i, x in enumerate(in_first) if x], [i for i, x in enumerate(in_first) if not x]

    def _paired(
        self,
        values: dict,
        real: torch.Tensor,
        generated: torch.Tensor,
        masks: torch.Tensor | None,
        segmenter: nn.Module | None,
    ) -> None:
        keys = ("ssim_paired", "psnr_paired", "correlation_in_mask", "mask_dice", "mask_dice_real")
        values.update(dict.fromkeys(keys))
        if masks is None:
            values["skipped"]["paired"] = "the variant has no mask: no real image pairs with a generated one"
            return
        per_case = {
            "ssim_paired": metrics.ssim_per_case(real, generated),
            "psnr_paired": metrics.psnr_per_case(real, generated),
            "correlation_in_mask": metrics.correlation_per_case(real, generated, masks),
        }
        if segmenter is not None:
            for key, images in (("mask_dice", generated), ("mask_dice_real", real)):
                predicted = downstream.predict(segmenter, images.to(self.device))
                per_case[key] = metrics.dice_per_case(masks, predicted, self.num_labels)
        for key, v in per_case.items():
            finite = torch.isfinite(v) if key != "psnr_paired" else ~torch.isnan(v)
            _mean_with_ci(values, key, v[finite], self.draws)

    def _class_accuracy(self, values: dict, real: torch.Tensor, generated: torch.Tensor) -> None:
        """How often the classifier gives a generated image its case's class, beside how often a real one."""
        values.update(dict.fromkeys(("class_accuracy", "class_accuracy_real")))
        if not self.num_classes or "class" not in self.real_cases[0]:
            values["skipped"]["class_accuracy"] = "the variant has no classes"
            return
        if not self.classifier_path or not os.path.isfile(self.classifier_path):
            values["skipped"]["class_accuracy"] = (
                f"no classifier at {self.classifier_path}; train one with bundle/configs/train_classifier.json"
            )
            return
        classifier = downstream.load(self.classifier_path, "classifier", self.image_size, self.num_classes, self.device)
        classes = torch.tensor([int(c["class"]) for c in self.real_cases])
        for key, images in (("class_accuracy", generated), ("class_accuracy_real", real)):
            _mean_with_ci(values, key, downstream.predict(classifier, images) == classes, self.draws)

    def _conditional_diversity(self, values: dict, real: torch.Tensor, masks: torch.Tensor | None) -> None:
        """``conditional_ms_ssim`` and ``contrast_spread`` of ``diversity_samples`` samples of each of
        ``diversity_cases`` conditions, beside ``contrast_spread_real``: the spread of the real subjects' contrasts
        (each subject's mean over its cases; real images (N, 1, *spatial), label maps ``masks`` alike or None)."""
        values.update(dict.fromkeys(("conditional_ms_ssim", "contrast_spread", "contrast_spread_real")))
        values["contrast_spread_ratio"] = None
        if masks is None:
            values["skipped"]["contrast_spread"] = "the variant has no mask: no tissues to compare"
        else:
            means = metrics.subject_means(metrics.tissue_log_ratios(real, masks), self._subjects())  # (subjects, 2)
            _set_statistic_with_ci(
                values,
                "contrast_spread_real",
                lambda i: float(metrics.contrast_spread(means[i])),
                len(means),
                self.draws,
            )
        if self.network is None or self.sampler is None:
            values["skipped"]["conditional_ms_ssim"] = "no generator given (a baseline or an imported set)"
            return
        if not self.num_labels and "class" not in self.real_cases[0]:
            values["skipped"]["conditional_ms_ssim"] = "an unconditional model has no condition to repeat"
            return
        picks = np.unique(np.linspace(0, len(self.real_cases) - 1, min(self.diversity_cases, len(self.real_cases))))
        cases = [self.real_cases[int(i)] for i in picks.round().astype(int)]
        batch = load_batch(cases, self.transforms)
        shape = [1, *self.image_size]
        self.network.to(self.device).eval()
        samples = [
            self.sampler.generate(self.network, batch, shape, self.seed + 7919 * (k + 1), self.device)[0].cpu()
            for k in range(self.diversity_samples)
        ]
        values["conditional_ms_ssim_cases"] = len(cases)
        values["conditional_ms_ssim_samples"] = self.diversity_samples
        groups = torch.stack(samples, dim=1)  # (cases, samples, 1, *spatial)
        _mean_with_ci(values, "conditional_ms_ssim", metrics.conditional_ms_ssim(groups), self.draws)
        if masks is None:
            return
        labels = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor)
        ratios = metrics.tissue_log_ratios(groups.flatten(0, 1), labels.repeat_interleave(self.diversity_samples, 0))
        spread = metrics.contrast_spread(ratios.view(len(cases), self.diversity_samples, -1))
        _mean_with_ci(values, "contrast_spread", spread, self.draws)
        real_spread = values["contrast_spread_real"]
        values["contrast_spread_ratio"] = values["contrast_spread"] / real_spread if real_spread else None

    def _interplane(self, values: dict, real: torch.Tensor, generated: torch.Tensor, conditioned: bool) -> None:
        """``interplane_ratio`` of the generated volumes beside ``interplane_ratio_real``, each the mean over
        volumes: every 3D image along its last (feet-head) axis, or each subject's 2D planes stacked in slice order
        (the same cases of both sets, generated from the real planes' masks)."""
        values.update(dict.fromkeys(("interplane_ratio", "interplane_ratio_real")))
        if len(self.image_size) == 3:
            sets = {"interplane_ratio": [x[0] for x in generated], "interplane_ratio_real": [x[0] for x in real]}
        elif not conditioned:
            values["skipped"]["interplane_ratio"] = "an unconditional model's samples are no planes of one series"
            return
        else:
            stacks, why = slice_stacks(self.real_cases)
            if why:
                values["skipped"]["interplane_ratio"] = why
                return
            sets = {
                key: [images[stack, 0].movedim(0, -1) for stack in stacks]
                for key, images in (("interplane_ratio", generated), ("interplane_ratio_real", real))
            }
        values["interplane_volumes"] = len(sets["interplane_ratio_real"])
        for key, volumes in sets.items():
            ratios = torch.tensor([metrics.interplane_ratio(v) for v in volumes])
            _mean_with_ci(values, key, ratios[torch.isfinite(ratios)], self.draws)

    def _load_segmenter(self, skipped: dict) -> nn.Module | None:
        """The segmenter of mask Dice and of the feature metrics; None (and why, in ``skipped``) without one."""
        if not self.num_labels:
            skipped["segmenter"] = "no labels to segment"
            return None
        if not self.segmenter_path or not os.path.isfile(self.segmenter_path):
            configs = "train_segmenter.json" + ("" if len(self.image_size) == 2 else " + train_segmenter_3d.json")
            skipped["segmenter"] = f"no segmenter at {self.segmenter_path}; train one with bundle/configs/{configs}"
            return None
        return downstream.load(self.segmenter_path, "segmenter", self.image_size, self.num_labels, self.device)

    def _fid(self, real: torch.Tensor, generated: torch.Tensor, skipped: dict) -> float | None:
        if not self.fid_model:
            skipped["fid"] = "no local Inception weights given (fid_model); none ship with any package or download"
            return None
        if len(self.image_size) != 2:
            skipped["fid"] = "FID uses a 2D feature network; this is a 3D model"
            return None
        if not os.path.isfile(self.fid_model):
            raise FileNotFoundError(f"fid_model not found: {self.fid_model}")
        network = torch.jit.load(self.fid_model, map_location=self.device).eval()

        def features(images: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear")
            with torch.no_grad():
                return network(x.repeat(1, 3, 1, 1).to(self.device)).cpu()

        return metrics.frechet_distance(features(real), features(generated))
