"""Metrics against values computed by hand on tiny arrays, and the sharpness, texture and contrast metrics on the
data set's real images: blurred, averaged and single-contrast versions of them score worse."""

import math

import pytest
import torch

from scripts.denoising import add_noise, nl_means
from scripts.metrics import (
    bootstrap_ci,
    conditional_ms_ssim,
    contrast_spread,
    correlation_per_case,
    frechet_distance,
    gradient_magnitude,
    high_frequency_power,
    hist_wasserstein,
    log_spectral_distance,
    mask_dice,
    mean_with_ci,
    mmd,
    ms_ssim_diversity,
    psnr_per_case,
    radial_power_spectra,
    ssim_per_case,
    standardised,
    subject_means,
    texture_features,
    tissue_log_ratios,
)


def test_mmd_is_the_equal_size_unbiased_statistic():
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3) + 0.5
    a, b = x.flatten(1).double().numpy(), y.flatten(1).double().numpy()
    m = len(a)
    h = [a[i] @ a[j] + b[i] @ b[j] - a[i] @ b[j] - a[j] @ b[i] for i in range(m) for j in range(m) if i != j]
    assert mmd(x, y) == pytest.approx(sum(h) / (m * (m - 1)), rel=1e-6)
    assert mmd(x, x) == 0


def test_mmd_is_not_biased_by_pairing():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(256, 1, 4, 4, generator=g)
    paired = real + 0.1 * torch.randn(256, 1, 4, 4, generator=g)  # each sample close to its own real image
    assert abs(mmd(real, paired)) < 0.02  # same distribution: about 0 (with the pairs x_i . y_i counted: -0.12)
    with pytest.raises(ValueError, match="at least two"):
        mmd(real[:1], paired[:1])


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(0)
    same = mmd(torch.randn(64, 1, 4, 4, generator=g), torch.randn(64, 1, 4, 4, generator=g))
    shifted = mmd(torch.randn(64, 1, 4, 4, generator=g), torch.randn(64, 1, 4, 4, generator=g) + 1)
    assert abs(same) < 2 and shifted == pytest.approx(16, rel=0.25)  # |mean difference|^2 = 16 pixels x 1


def test_histogram_wasserstein():
    x = torch.linspace(-1, 1, 50).view(2, 1, 5, 5)
    assert hist_wasserstein(x, x) == 0
    assert hist_wasserstein(x, x + 0.3) == pytest.approx(0.3)
    assert hist_wasserstein(x, x.flip(0)) == 0  # a distance between intensity distributions, not images


def test_paired_ssim_and_psnr():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert ssim_per_case(x, x).tolist() == pytest.approx([1.0] * 3)
    assert torch.isinf(psnr_per_case(x, x)).all()
    # a constant error of 0.1 in a range of 2: MSE 0.01 -> 10 log10(4 / 0.01)
    assert psnr_per_case(x, x + 0.1).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 3, rel=1e-5)
    assert ssim_per_case(x, torch.rand(3, 1, 32, 32) * 2 - 1).mean() < 0.2


def test_correlation_in_mask_ignores_gain_offset_and_the_background():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 1, 16, 16, generator=g)
    masks = torch.zeros(2, 1, 16, 16)
    masks[..., 4:12, 4:12] = 2
    generated = 3 * real + 0.5
    generated[..., :2, :] = 9  # outside the mask: ignored
    assert correlation_per_case(real, generated, masks).tolist() == pytest.approx([1.0, 1.0])
    assert correlation_per_case(real, -real, masks).tolist() == pytest.approx([-1.0, -1.0])
    noise = torch.rand(2, 1, 16, 16, generator=g)
    assert correlation_per_case(real, noise, masks).abs().max() < 0.4


def test_kid_kernel_mmd_and_frechet_distance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    assert abs(mmd(a, b, "polynomial")) < 0.2 < 2 < mmd(a, b + 1, "polynomial")
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b + 1) == pytest.approx(8, rel=0.2)  # |mean difference|^2 = 8, same covariances
    with pytest.raises(ValueError, match="kernel"):
        mmd(a, b, "rbf")


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_cases():
    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(20, generator=g), torch.randn(2000, generator=g)
    lo, hi = bootstrap_ci(lambda i: float(small[i].mean()), len(small))
    assert lo < float(small.mean()) < hi
    lo2, hi2 = bootstrap_ci(lambda i: float(large[i].mean()), len(large))
    assert hi2 - lo2 < (hi - lo) / 4


def test_mean_with_ci_leaves_out_nan_cases_and_gives_nan_when_none_is_left():
    value, (lo, hi) = mean_with_ci(torch.tensor([0.2, math.nan, 0.4, 0.6], dtype=torch.float64))
    assert value == pytest.approx(0.4) and 0.2 <= lo <= value <= hi <= 0.6
    value, interval = mean_with_ci(torch.tensor([math.nan, math.nan]))
    assert math.isnan(value) and all(math.isnan(v) for v in interval)


def test_set_statistic_interval_is_shifted_off_the_bias_of_repeated_cases():
    g = torch.Generator().manual_seed(0)
    real, generated = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    value = frechet_distance(real, generated)
    replicate = lambda i: frechet_distance(real[i], generated[i])  # noqa: E731
    plain, shifted = bootstrap_ci(replicate, 40), bootstrap_ci(replicate, 40, centre=value)
    assert value < plain[0]  # fewer distinct cases, more small-sample bias: all replicates above
    assert shifted[0] < value < shifted[1]
    assert shifted[1] - shifted[0] == pytest.approx(plain[1] - plain[0], rel=1e-6)


def test_conditional_ms_ssim_is_one_for_a_collapsed_model():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 1, 64, 64) * 2 - 1
    assert conditional_ms_ssim(x.repeat(1, 4, 1, 1, 1)).tolist() == pytest.approx([1.0] * 3)
    assert conditional_ms_ssim(torch.rand(3, 4, 1, 64, 64) * 2 - 1).max() < 0.3


def test_ms_ssim_diversity():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    assert ms_ssim_diversity(x.repeat(3, 1, 1, 1)) == pytest.approx(1.0)
    assert ms_ssim_diversity(x) is None
    assert ms_ssim_diversity(torch.rand(4, 1, 64, 64) * 2 - 1) < 0.3
    assert ms_ssim_diversity(torch.rand(3, 1, 16, 16, 16) * 2 - 1) < 0.3  # 3D and small images: fewer scales


def test_mask_dice():
    a = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    a[..., :2, :] = 1
    a[..., 2:, :2] = 2
    assert mask_dice(a, a, 3) == pytest.approx(1.0)
    b = a.clone()
    b[..., 0, :] = 0  # label 1 loses half its 8 pixels: Dice 2*4/(8+4) = 2/3; label 2 untouched
    assert mask_dice(a, b, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert mask_dice(a, torch.zeros_like(a), 3) == 0


def test_added_noise_has_the_asked_level():
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(4, 1, 64, 64)
    assert (add_noise(clean, "gaussian", 0.05, g) - clean).std() == pytest.approx(0.1, rel=0.05)
    rician = add_noise(torch.full((4, 1, 64, 64), -1.0), "rician", 0.05, g)
    assert rician.min() >= -1 and rician.mean() > -1 + 0.05  # magnitude noise is positive: biased on black
    with pytest.raises(ValueError, match="noise kind"):
        add_noise(clean, "poisson", 0.1, g)


def test_nl_means_removes_noise():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    clean = ((xx**2 + yy**2) < 0.5).float().view(1, 1, 48, 48) * 1.6 - 0.8
    noisy = add_noise(clean, "gaussian", 0.05, g)
    assert psnr_per_case(clean, nl_means(noisy, [0.1])).mean() > psnr_per_case(clean, noisy).mean() + 3


def test_grids_window_each_image_by_its_own_percentiles(tmp_path):
    import matplotlib.image

    from scripts.visualize import save_grid

    dark = torch.linspace(-1.0, -0.8, 64 * 64).view(1, 64, 64)  # a real image in other units: the model range's bottom
    for name, window in (("own", None), ("fixed", (-1.0, 1.0))):
        png = matplotlib.image.imread(save_grid(str(tmp_path / f"{name}.png"), [("real", [dark])], value_range=window))
        grey = png[..., 0]
        mid_grey = ((grey > 0.3) & (grey < 0.7)).mean()
        assert (mid_grey > 0.1) if window is None else (mid_grey < 0.01)  # (a few pixels of the title's edges)


def test_orthogonal_planes_are_the_central_planes_of_each_axis():
    from scripts.visualize import orthogonal_planes

    volume = torch.arange(2 * 4 * 6 * 8, dtype=torch.float32).view(2, 4, 6, 8)  # (C, X, Y, Z)
    axial, coronal, sagittal = orthogonal_planes(volume)
    assert (axial.shape, coronal.shape, sagittal.shape) == ((2, 4, 6), (2, 4, 8), (2, 6, 8))
    assert torch.equal(axial, volume[:, :, :, 4]) and torch.equal(coronal, volume[:, :, 3, :])
    assert torch.equal(sagittal, volume[:, 2, :, :])


@pytest.fixture(scope="module")
def slices(data_dir):
    """Every 2D slice of the data set's subjects on a 64 x 64 grid in [-1, 1]: images, label maps (N, 1, 64, 64),
    each slice's subject and the subjects' gammas (their contrasts) by name."""
    import json

    from scripts.data import input_transforms, load_cases, load_images, percentile_range

    datalist = str(data_dir / "datalist_2d.json")
    cases = [c for split in ("training", "validation", "test") for c in load_cases(datalist, split, use_mask=True)]
    transforms = input_transforms([64, 64], 4, percentile_range(cases))
    gammas = {s["name"]: s["gamma"] for s in json.loads((data_dir / "subjects.json").read_text())["subjects"]}
    return (
        load_images(cases, transforms),
        load_images(cases, transforms, key="label"),
        [c["subject"] for c in cases],
        gammas,
    )


def _blurred(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(gaussian_filter(images.numpy(), [0, 0] + [sigma] * (images.dim() - 2)))


def _halves(subjects: list[str]) -> tuple[list[int], list[int]]:
    """Alternate subjects' cases, as the evaluation splits them."""
    names = list(dict.fromkeys(subjects))
    first = set(names[0::2])
    return [i for i, s in enumerate(subjects) if s in first], [i for i, s in enumerate(subjects) if s not in first]


def sharpness_and_texture(real, generated, masks, a, b) -> dict[str, tuple[float, float]]:
    """Each new metric as (generated images of half a against real images of half b, real half a against real half
    b), the evaluation's ``_halves_generated`` / ``_halves_real`` pairs."""

    def ratio(measure):
        return lambda r, g: float(measure(g, masks[a]).mean() / measure(r, masks[b]).mean())

    def spectra(r, g):
        return log_spectral_distance(radial_power_spectra(r, masks[b])[0], radial_power_spectra(g, masks[a])[0])

    reference = texture_features(real, masks)

    def texture(distance):
        def statistic(r, g):
            f_real = standardised(texture_features(r, masks[b]), reference)
            return distance(f_real, standardised(texture_features(g, masks[a]), reference))

        return statistic

    statistics = {
        "hf_power_ratio": ratio(high_frequency_power),
        "gradient_ratio": ratio(gradient_magnitude),
        "log_spectral_distance": spectra,
        "fd_texture_features": texture(frechet_distance),
        "kid_texture_features": texture(lambda x, y: mmd(x, y, "polynomial")),
    }
    return {key: (f(real[b], generated[a]), f(real[b], real[a])) for key, f in statistics.items()}


def _worse(key: str, generated: float, real: float) -> bool:
    """Whether a generated set's value is further than the real halves' from the ideal (1 for ratios, 0 else)."""
    return abs(math.log(generated)) > abs(math.log(real)) if key.endswith("ratio") else generated > real


def test_blurred_real_slices_score_worse_on_every_sharpness_and_texture_metric(slices):
    real, masks, subjects, _ = slices
    values = sharpness_and_texture(real, _blurred(real), masks, *_halves(subjects))
    print({k: [round(v, 4) for v in pair] for k, pair in values.items()})  # the dynamic range, for the docs
    for key, (blurred, reference) in values.items():
        assert _worse(key, blurred, reference), (key, blurred, reference)
    assert values["hf_power_ratio"][0] < 1 and values["gradient_ratio"][0] < 1  # blur lowers both, not raises


def test_blurred_real_volumes_score_worse(data_dir):
    from scripts.data import input_transforms, load_cases, load_images, percentile_range

    cases = [c for s in ("training", "validation", "test") for c in load_cases(str(data_dir / "datalist_3d.json"), s)]
    transforms = input_transforms([32, 32, 32], 4, percentile_range(cases))
    real, masks = load_images(cases, transforms), load_images(cases, transforms, key="label")
    a, b = _halves([c["subject"] for c in cases])
    for key, (blurred, reference) in sharpness_and_texture(real, _blurred(real), masks, a, b).items():
        assert _worse(key, blurred, reference), (key, blurred, reference)


def test_contrasts_of_one_subject_spread_less_than_the_real_subjects(slices):
    images, masks, subjects, gammas = slices
    # every slice given the first subject's contrast: its data are gain x bias x template^gamma, so raising a
    # slice to gamma_0 / gamma_own leaves the anatomy and gives it subject 0's tissue contrasts
    power = torch.tensor([gammas[subjects[0]] / gammas[s] for s in subjects]).view(-1, 1, 1, 1)
    one_contrast = ((images + 1) / 2).clamp(min=0) ** power * 2 - 1
    real, same = (subject_means(tissue_log_ratios(x, masks), subjects) for x in (images, one_contrast))
    assert len(real) == len(gammas) and float(contrast_spread(same)) < float(contrast_spread(real)) / 2


def test_the_mean_of_a_two_mode_problem_wins_psnr_and_ssim_but_no_sharpness_texture_or_contrast_metric(slices):
    images, masks, subjects, _ = slices
    g = torch.Generator().manual_seed(0)
    brain = (masks > 0).float()
    unit = ((images + 1) / 2).clamp(min=0)
    modes = (unit**0.8 * 2 - 1, unit**1.25 * 2 - 1)  # two contrasts of each mask (the subjects: 0.75-1.35)

    def draw() -> torch.Tensor:
        """One sample of each mask: a random mode with its own texture (fine grain, or coarser and patchy)."""
        fine = 0.08 * torch.randn(images.shape, generator=g)
        coarse = _blurred(torch.randn(images.shape, generator=g), 1.5)
        coarse *= 0.08 / coarse.std()
        second = torch.rand(len(images), 1, 1, 1, generator=g) < 0.5
        return torch.where(second, modes[1] + coarse * brain, modes[0] + fine * brain)

    real, sample = draw(), draw()
    mean = (modes[0] + modes[1]) / 2  # the conditional mean: the textures average out, the contrasts meet halfway
    assert psnr_per_case(real, mean).mean() > psnr_per_case(real, sample).mean()
    assert ssim_per_case(real, mean).mean() > ssim_per_case(real, sample).mean()
    halves = _halves(subjects)
    of_sample, of_mean = (sharpness_and_texture(real, x, masks, *halves) for x in (sample, mean))
    for key in of_sample:
        assert _worse(key, of_mean[key][0], of_sample[key][0]), (key, of_mean[key], of_sample[key])
    samples = torch.stack([draw() for _ in range(4)], 1)  # (N, 4, 1, 64, 64): four samples of each mask
    ratios = tissue_log_ratios(samples.flatten(0, 1), masks.repeat_interleave(4, 0)).view(len(images), 4, 2)
    mean_ratios = tissue_log_ratios(mean, masks)[:, None].expand(-1, 4, -1)
    assert contrast_spread(mean_ratios).nanmean() < contrast_spread(ratios).nanmean()
