"""The deploy app's model side: finding and loading the bundle, and synthesis and denoising with 2D and 3D models
(tiny untrained networks of the real architecture) on real planes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.deploy.core.domain.dicom_series import DICOMSeries

from conftest import error_text
from motfm_deploy.images import read_planes
from motfm_deploy.jobs import Job
from motfm_deploy.labels import LabelMap
from motfm_deploy.model import Bundle, find_bundle
from operators.denoise import denoise
from operators.seg_reader import synthesis_job
from operators.synthesis import axial_levels, class_rule, synthesis_cases, synthesize
from testbed import ROOT
from testbed.bundles import BUNDLE, BUNDLE_VERSION, make_bundle, tiny_deploy
from testbed.studies import study_header, write_mr_series, write_seg

pytestmark = pytest.mark.usefixtures("one_thread")

AXIAL_LEVELS = {"rule": "axial_level", "names": ["inferior third", "middle third", "superior third"]}


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
    return Bundle(make_bundle(tmp_path_factory.mktemp("b2") / "motfm", tiny_deploy()))


@pytest.fixture(scope="module")
def bundle_3d(tmp_path_factory) -> Bundle:
    return Bundle(
        make_bundle(tmp_path_factory.mktemp("b3") / "motfm", tiny_deploy((16, 16, 16), "mask_3d", num_steps=1))
    )


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


def test_model_cards_declare_what_their_classes_mean():
    """Training writes the config's ``classes`` into the card (the default data's: axial levels); a model without
    classes keeps none; names of another number of classes than the network's are refused (the CAMUS command of
    bundle/docs/datasets.md gives its own)."""

    def card(variant: str = "mask_class_2d", **overrides) -> dict:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", f"variants/{variant}.json")])
        parser.update({"train#intensity_range": [0.0, 900.0], **overrides})
        return parser.get_parsed_content("card").state_dict()

    assert card()["classes"] == card("class_2d")["classes"] == AXIAL_LEVELS
    assert card("mask_2d")["classes"] is None
    with pytest.raises((RuntimeError, ValueError)) as excinfo:
        card(num_classes=4)
    assert "classes declares 3 class names" in error_text(excinfo) and "a network of 4 classes" in error_text(excinfo)
    camus = {"names": ["2CH_ED", "2CH_ES", "4CH_ED", "4CH_ES"]}
    assert card(num_classes=4, classes=camus)["classes"] == camus


def with_card_classes(bundle: Bundle, folder, classes=None, drop: bool = False, deploy: dict | None = None) -> Bundle:
    """A copy of ``bundle`` whose model file's card declares ``classes`` (``drop``: has no such entry, as files
    written before cards declared them), with ``deploy`` added to its configs/deploy.json."""
    root = shutil.copytree(bundle.path, folder, symlinks=True)
    file = root / "models" / "model.pt"
    state = torch.load(file, weights_only=True)
    if drop:
        del state["card"]["classes"]
    else:
        state["card"]["classes"] = classes
    torch.save(state, file)
    config = json.loads((root / "configs" / "deploy.json").read_text())
    (root / "configs" / "deploy.json").write_text(json.dumps({**config, **(deploy or {})}))
    return Bundle(root)


def test_class_models_need_a_class_rule_the_app_knows(tmp_path, job, bundle_2d):
    """The app gives a class model the classes of the rule its card declares; a file without a declaration takes
    the bundle config's; a card that declares none, or a rule the app does not know, is refused naming the file."""
    assert bundle_2d.model.classes == AXIAL_LEVELS and class_rule(bundle_2d.model) is axial_levels
    older = with_card_classes(bundle_2d, tmp_path / "older", drop=True).model
    assert older.classes == AXIAL_LEVELS and synthesize(older, job).details == "axial level classes [0, 1, 2]"
    refused = {
        "declares no rule for its classes": with_card_classes(bundle_2d, tmp_path / "none"),
        "declares no rule": with_card_classes(bundle_2d, tmp_path / "old", drop=True, deploy={"classes": None}),
        "names the class rule 'view_phase'": with_card_classes(
            bundle_2d, tmp_path / "views", {"rule": "view_phase", "names": ["2CH", "4CH", "other"]}
        ),
        "'axial_level', which gives 3 classes, for a model of 5 classes": Bundle(
            make_bundle(tmp_path / "five", {**tiny_deploy(), "num_classes": 5, "classes": {"rule": "axial_level"}})
        ),
    }
    for message, bundle in refused.items():
        with pytest.raises(ValueError, match=message) as excinfo:
            synthesize(bundle.model, job)
        assert str(excinfo.value).startswith(f"model file {bundle.path / 'models' / 'model.pt'}: ")


def test_the_shipped_model_declares_its_classes_through_the_bundle_config():
    """bundle/models/model.pt, whose card may predate class declarations, gets the axial levels."""
    model = Bundle(ROOT / "bundle").model
    assert model.num_classes == 3 and model.classes == AXIAL_LEVELS and class_rule(model) is axial_levels


def test_synthesis_2d_is_reproducible_on_the_source_grid(job, bundle_2d):
    first = synthesize(bundle_2d.model, job)
    assert first.images.shape == (5, *job.planes[0].shape) and first.nfe == 2
    assert first.details == "axial level classes [0, 1, 2]"
    np.testing.assert_array_equal(synthesize(bundle_2d.model, job).images, first.images)
    assert np.isfinite(first.images).all() and first.images.std() > 0


def test_planes_of_a_series_share_one_noise_unless_deploy_json_says_per_case(tmp_path, job, bundle_2d):
    shared = bundle_2d.model
    assert shared.noise == "per_subject" and len({c["noise_index"] for c in synthesis_cases(shared, job)}) == 1
    root = shutil.copytree(bundle_2d.path, tmp_path / "per_case", symlinks=True)
    config = json.loads((root / "configs" / "deploy.json").read_text())
    (root / "configs" / "deploy.json").write_text(json.dumps({**config, "noise": "per_case"}))
    own = Bundle(root).model
    assert own.noise == "per_case" and [c["noise_index"] for c in synthesis_cases(own, job)] == [0, 1, 2, 3, 4]
    assert not np.array_equal(synthesize(shared, job).images, synthesize(own, job).images)


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
