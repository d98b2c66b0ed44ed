"""The deploy app's model side: finding and loading the bundle, and synthesis and denoising with 2D and 3D models
(tiny untrained networks of the real architecture) on real planes."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from deploy_fixtures import BUNDLE_VERSION, ROOT, make_bundle, study_header, write_mr_series, write_seg

sys.path.insert(0, str(ROOT / "deploy_app"))

from monai.deploy.core.domain.dicom_series import DICOMSeries  # noqa: E402

from motfm_deploy.images import read_planes  # noqa: E402
from motfm_deploy.jobs import Job  # noqa: E402
from motfm_deploy.labels import LabelMap  # noqa: E402
from motfm_deploy.model import Bundle, find_bundle  # noqa: E402
from operators.denoise import denoise  # noqa: E402
from operators.seg_reader import synthesis_job  # noqa: E402
from operators.synthesis import axial_levels, synthesize  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread: the test machine is shared, and tiny networks gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def job(tmp_path_factory, volumes) -> Job:
    """A synthesis job: 5 axial planes of an MR series and the labels of its SEG."""
    folder = tmp_path_factory.mktemp("study")
    image, labels = volumes
    source = write_mr_series(folder, image, study_header(), num_slices=5, spacing=4.0)
    seg = write_seg(folder / "seg.dcm", source, labels)
    series = DICOMSeries(source[0].SeriesInstanceUID)
    for ds in source:
        series.add_sop_instance(ds)
    return synthesis_job(seg, [series], LabelMap.read())


@pytest.fixture(scope="module")
def bundle_2d(tmp_path_factory) -> Bundle:
    return Bundle(make_bundle(tmp_path_factory.mktemp("b2") / "motfm"))


@pytest.fixture(scope="module")
def bundle_3d(tmp_path_factory) -> Bundle:
    return Bundle(make_bundle(tmp_path_factory.mktemp("b3") / "motfm", (16, 16, 16), "mask_3d", num_steps=1))


def test_find_bundle(tmp_path, bundle_2d):
    root = bundle_2d.path
    assert find_bundle(root) == root and find_bundle(root.parent) == root
    with pytest.raises(FileNotFoundError, match=r"must be a MOTFM bundle .* \(found none\)"):
        find_bundle(tmp_path)
    shutil.copytree(root, tmp_path / "a", symlinks=True)
    shutil.copytree(root, tmp_path / "b", symlinks=True)
    with pytest.raises(FileNotFoundError, match=r"hold exactly one \(found a, b\)"):
        find_bundle(tmp_path)


def test_bundle_loads_the_model_with_its_overrides(bundle_2d):
    model = bundle_2d.model
    assert model.image_size == [32, 32] and model.spatial_dims == 2
    assert (model.num_labels, model.num_classes) == (4, 3)
    assert model.intensity_range == [0.0, 900.0]
    assert (model.name, model.version) == ("MOTFM brain MR synthesis", BUNDLE_VERSION)
    assert model.settings == "flow, euler solver, 2 steps" and model.device == torch.device("cpu")


def test_a_bundle_that_does_not_fit_is_refused(tmp_path, bundle_2d):
    broken = shutil.copytree(bundle_2d.path, tmp_path / "broken", symlinks=True)
    config = json.loads((broken / "configs" / "deploy.json").read_text())
    config["unet"]["channels"] = [8, 8]
    (broken / "configs" / "deploy.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"checkpoint {broken / 'models' / 'model.pt'} .* does not fit"):
        _ = Bundle(broken).model
    (broken / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        _ = Bundle(broken).model


def test_axial_levels(job):
    """Thirds of the labelled extent along the feet-head axis, by slice rank; not axial: no class."""
    assert axial_levels(job.planes, job.labels) == [0, 0, 1, 1, 2]
    assert axial_levels(job.planes[::-1], job.labels[::-1]) == [2, 1, 1, 0, 0]
    labels = job.labels.copy()
    labels[0] = 0  # the lowest plane holds no brain: it counts as the inferior end
    assert axial_levels(job.planes, labels) == [0, 0, 0, 1, 2]
    sagittal = [type(p)(**{**p.__dict__, "row_cosine": np.array([0.0, 1, 0])}) for p in job.planes]
    for plane in sagittal:
        plane.column_cosine = np.array([0.0, 0, -1])
    assert axial_levels(sagittal, job.labels) == [None] * 5


def test_synthesis_2d_is_reproducible_on_the_source_grid(job, bundle_2d):
    first = synthesize(bundle_2d.model, job)
    assert first.images.shape == (5, *job.planes[0].shape) and first.nfe == 2
    assert first.details == "axial level classes [0, 1, 2]"
    np.testing.assert_array_equal(synthesize(bundle_2d.model, job).images, first.images)
    assert np.isfinite(first.images).all() and first.images.std() > 0


def test_denoising_2d_keeps_the_source_units(job, bundle_2d):
    source = np.stack([p.pixels() for p in job.planes])
    out = denoise(bundle_2d.model, job)
    assert out.images.shape == source.shape and out.nfe == 2
    assert out.details.startswith("noise std ") and "estimated on [-1, 1] = [" in out.details
    assert np.corrcoef(out.images.ravel(), source.ravel())[0, 1] > 0.9
    assert abs(out.images.mean() - source.mean()) < 0.05 * np.ptp(source)


def test_3d_model_runs_on_the_whole_stack(job, bundle_3d):
    model = bundle_3d.model
    assert model.spatial_dims == 3 and model.num_classes == 0
    synthesized = synthesize(model, job)
    assert synthesized.images.shape == (5, *job.planes[0].shape) and synthesized.nfe == 1
    denoised = denoise(model, job)
    assert denoised.images.shape == (5, *job.planes[0].shape)
    assert np.corrcoef(denoised.images.ravel(), np.stack([p.pixels() for p in job.planes]).ravel())[0, 1] > 0.8


def test_3d_model_needs_one_stack(job, bundle_3d):
    planes = read_planes([p.dataset for p in job.planes])
    planes[2].row_cosine, planes[2].column_cosine = np.array([0.0, 1, 0]), np.array([0.0, 0, -1])
    with pytest.raises(ValueError, match="a 3D model needs one stack"):
        synthesize(bundle_3d.model, Job("synthesize", "x", planes, job.labels))
