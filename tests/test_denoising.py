"""The denoising policy (``scripts.denoising.Denoiser``): the same in any units, the same pixels from the bundle
and from the DICOM app, and a bad series refused with its name."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import CONFIGS, error_text, published_table, tiny
from motfm_deploy.jobs import process
from motfm_deploy.model import Bundle, plane_tensor
from operators.denoise import denoise
from operators.seg_reader import denoise_job
from scripts.data import input_transforms, load_cases, load_images
from scripts.denoising import Denoiser, add_noise, series_range
from scripts.metrics import psnr_per_case
from testbed.bundles import make_bundle, tiny_deploy
from testbed.studies import study_header, write_mr_series

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shipped():
    """The shipped model's network and denoiser, as ``denoise.json`` builds them (10 Euler steps)."""
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "denoise.json")],
        workflow_type=None,
        logging_file=False,
        device="cpu",
    )
    wf.initialize()
    return wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("denoiser")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle folder with a tiny untrained network (32 x 32, 2 Euler steps), as the app loads it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "motfm", tiny_deploy())


def test_the_policy_gives_the_same_result_in_other_units(shipped, data_dir):
    """A series and the same series in another scanner's units (0-130 with an offset) are denoised alike: the
    results differ only by the map between the units, and both have less noise than the input."""
    network, denoiser = shipped
    cases = load_cases(str(data_dir / "datalist_2d.json"), "test")[::6][:3]
    clean = load_images(cases, input_transforms([64, 64], 4, None))
    noisy = add_noise(clean, "gaussian", 0.05, torch.Generator().manual_seed(0), series_range(clean, "clean"))
    scale, offset = 130.0 / float(clean.max()), -20.0
    ours = denoiser(network, noisy, "series")
    other = denoiser(network, noisy * scale + offset, "series in other units")
    assert other.sigma == pytest.approx(ours.sigma, rel=1e-4)
    assert other.intensity_range == pytest.approx([v * scale + offset for v in ours.intensity_range], rel=1e-5)
    torch.testing.assert_close(other.images, ours.images * scale + offset, rtol=0, atol=1e-4 * 130)
    lo, hi = ours.intensity_range
    in_model = [(2 * (x - lo) / (hi - lo) - 1).clamp(-1, 1) for x in (clean, noisy, ours.images)]
    assert psnr_per_case(in_model[0], in_model[2]).mean() > psnr_per_case(in_model[0], in_model[1]).mean() + 3


def _bundle_denoise(bundle: Path, image: Path, out: Path) -> Path:
    """Runs the bundle's denoise.json (with the bundle's own configs) on one image file; returns the output file."""
    datalist = out.parent / f"{out.name}_datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": str(image)}]}))
    configs = [bundle / "configs" / "inference.json", bundle / "configs" / "deploy.json", CONFIGS / "denoise.json"]
    wf = ConfigWorkflow(
        config_file=[str(c) for c in configs],
        workflow_type=None,
        logging_file=False,
        datalist=str(datalist),
        dataset_dir=str(datalist.parent),
        ckpt_path=str(bundle / "models" / "model.pt"),
        output_dir=str(out),
    )
    wf.initialize()
    wf.run()
    return out / json.loads((out / "datalist.json").read_text())["training"][0]["image"]


def test_the_app_and_the_bundle_give_the_same_pixels(tiny_bundle, volumes, tmp_path):
    """One MR plane denoised by the DICOM app and, written as NIfTI with the same geometry, by denoise.json."""
    source = write_mr_series(tmp_path / "dicom", volumes[0], study_header(), num_slices=1, spacing=4.0)
    job = denoise_job(source)
    app = denoise(Bundle(tiny_bundle).model, job)
    plane = job.planes[0]
    tensor = plane_tensor(plane, plane.pixels())  # (1, columns, rows), its 2D affine
    affine = np.eye(4)
    affine[np.ix_([0, 1, 3], [0, 1, 3])] = np.asarray(tensor.affine)
    nib.save(nib.Nifti1Image(np.asarray(tensor[0]), affine), tmp_path / "plane.nii.gz")
    bundle = np.asarray(nib.load(_bundle_denoise(tiny_bundle, tmp_path / "plane.nii.gz", tmp_path / "out")).dataobj)
    assert app.images.shape == (1, *plane.shape) and bundle.T.shape == plane.shape
    assert np.abs(app.images[0] - plane.pixels()).max() > 1  # the network changed the pixels
    np.testing.assert_allclose(bundle.T, app.images[0], rtol=0, atol=1e-4 * np.ptp(plane.pixels()))


def test_a_series_without_spread_or_with_nan_is_refused_by_name(tiny_bundle, volumes, tmp_path):
    model = Bundle(tiny_bundle).model
    denoiser = Denoiser(model.sampler)
    flat, broken = torch.full((2, 1, 32, 32), 40.0), torch.rand(2, 1, 32, 32)
    broken[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="sub-01 T1 has no intensity spread"):
        denoiser(model.network, flat, "sub-01 T1")
    with pytest.raises(ValueError, match="sub-01 T1 holds NaN or infinite intensities"):
        denoiser(model.network, broken, "sub-01 T1")
    # the app: the job fails, naming its series
    source = write_mr_series(tmp_path / "dicom", volumes[0], study_header(), num_slices=2, spacing=4.0)
    for ds in source:
        ds.PixelData = np.full((ds.Rows, ds.Columns), 70, np.uint16).tobytes()
    job = denoise_job(source)
    (failed,) = process([job], lambda j: denoise(model, j))
    assert failed.images is None and failed.error.startswith(job.name)
    assert "the series has no intensity spread" in failed.error
    # the bundle: the workflow fails, naming the file
    nib.save(nib.Nifti1Image(np.full((40, 48), 12.0, np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(RuntimeError) as excinfo:
        _bundle_denoise(tiny_bundle, tmp_path / "flat.nii.gz", tmp_path / "out")
    assert f"{tmp_path / 'flat.nii.gz'} has no intensity spread" in error_text(excinfo)


def test_the_benchmark_scores_a_set_in_other_units_as_the_set_itself(data_dir, tiny_model, tmp_path):
    """bench/denoising.py on a tiny model: the linearly rescaled set (0-130) scores as the test slices do."""
    from denoising import SETS, main

    record = main(
        ckpt_path=str(tiny_model),
        data_dir=str(data_dir),
        out_dir=str(tmp_path / "out"),
        work_dir=str(tmp_path / "work"),
        slice_stride=12,
        levels=(0.1,),
        num_steps=2,
        **tiny("mask_class_2d"),
    )
    assert [record["sets"][name]["num_series"] for name in SETS] == [2, 2, 2]
    assert 100 < record["sets"][SETS[1]]["intensities"][1] <= 130 < record["sets"][SETS[0]]["intensities"][1]
    rows = {(r["data"], r["noise"]): r for r in record["rows"]}
    for noise in ("gaussian", "rician"):
        ours, other = rows[(SETS[0], noise)], rows[(SETS[1], noise)]
        assert other["psnr_flow"] == pytest.approx(ours["psnr_flow"], abs=0.1)
        assert other["psnr_nl-means"] == pytest.approx(ours["psnr_nl-means"], abs=0.1)
    assert published_table(tmp_path / "out", "denoising").count("| other units") == 4
