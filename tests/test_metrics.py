"""Metrics against values computed by hand on tiny arrays."""

import math

import pytest
import torch

from scripts.denoising import add_noise, nl_means
from scripts.metrics import (
    bootstrap_ci,
    conditional_ms_ssim,
    correlation_per_case,
    frechet_distance,
    hf_power_ratio,
    hist_wasserstein,
    mask_dice,
    mean_with_ci,
    mmd,
    ms_ssim_diversity,
    psnr_per_case,
    ssim_per_case,
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


def test_hf_power_ratio_is_one_for_the_same_image_and_falls_with_blur():
    from monai.transforms import GaussianSmooth

    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = torch.stack([GaussianSmooth(sigma=1.0)(v) for v in x])
    assert hf_power_ratio(x, x).tolist() == pytest.approx([1.0, 1.0])
    assert (hf_power_ratio(x, blurred) < 0.2).all() and (hf_power_ratio(blurred, x) > 5).all()
    assert hf_power_ratio(x, 2 * x).tolist() == pytest.approx([4.0, 4.0])


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
