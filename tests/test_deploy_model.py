"""The deploy app's model side: finding and loading the bundle, and synthesis and denoising with 2D and 3D models
(tiny untrained networks of the real architecture) on real planes."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.deploy.core.domain.dicom_series import DICOMSeries

from conftest import error_text
from motfm_deploy.images import Plane, read_planes
from motfm_deploy.jobs import Job
from motfm_deploy.labels import LabelMap
from motfm_deploy.model import LPS_TO_RAS, MAX_VOXELS, Bundle, find_bundle, volume_tensor
from motfm_deploy.stack import Stack
from operators.denoise import denoise
from operators.seg_reader import synthesis_job
from operators.synthesis import class_rule, plane_classes, synthesis_cases, synthesize
from scripts.classes import CLASS_RULES
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


def test_deploy_3d_switches_the_app_to_the_3d_model_file(tmp_path):
    """configs/deploy_3d.json copied to deploy.json: the variant's file is merged (mask_3d has no class) and the
    weights come from models/model_3d.pt; without that file the app names it."""
    deploy = {**tiny_deploy((16, 16, 16), "mask_3d"), **json.loads((BUNDLE / "configs" / "deploy_3d.json").read_text())}
    del deploy["num_classes"]  # left to the variant's file
    root = make_bundle(tmp_path / "motfm", deploy)
    (root / "models" / "model.pt").rename(root / "models" / "model_3d.pt")
    model = Bundle(root).model
    assert model.file == str(root / "models" / "model_3d.pt")
    assert (model.spatial_dims, model.num_labels, model.num_classes) == (3, 4, 0)
    (root / "models" / "model_3d.pt").rename(root / "models" / "model.pt")
    with pytest.raises(FileNotFoundError, match="model_3d.pt"):
        _ = Bundle(root).model


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
    axial_levels = CLASS_RULES["axial_level"]
    assert plane_classes(axial_levels, job.planes, job.labels) == [0, 0, 1, 1, 2]
    assert plane_classes(axial_levels, job.planes[::-1], job.labels[::-1]) == [2, 1, 1, 0, 0]
    labels = job.labels.copy()
    labels[0] = 0  # the lowest plane holds no brain: it counts as the inferior end
    assert plane_classes(axial_levels, job.planes, labels) == [0, 0, 0, 1, 2]
    sagittal = [type(p)(**{**p.__dict__, "row_cosine": np.array([0.0, 1, 0])}) for p in job.planes]
    for plane in sagittal:
        plane.column_cosine = np.array([0.0, 0, -1])
    assert plane_classes(axial_levels, sagittal, job.labels) == [None] * 5


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


def with_deploy(bundle: Bundle, folder, **settings) -> Bundle:
    """A copy of ``bundle`` with ``settings`` added to its configs/deploy.json."""
    root = shutil.copytree(bundle.path, folder, symlinks=True)
    config = json.loads((root / "configs" / "deploy.json").read_text())
    (root / "configs" / "deploy.json").write_text(json.dumps({**config, **settings}))
    return Bundle(root)


def with_card_classes(bundle: Bundle, folder, classes=None, drop: bool = False, deploy: dict | None = None) -> Bundle:
    """A copy of ``bundle`` whose model file's card declares ``classes`` (``drop``: has no such entry, as files
    written before cards declared them), with ``deploy`` added to its configs/deploy.json."""
    copy = with_deploy(bundle, folder, **(deploy or {}))
    file = copy.path / "models" / "model.pt"
    state = torch.load(file, weights_only=True)
    if drop:
        del state["card"]["classes"]
    else:
        state["card"]["classes"] = classes
    torch.save(state, file)
    return copy


def test_class_models_need_a_class_rule_the_app_knows(tmp_path, job, bundle_2d):
    """The app gives a class model the classes of the rule its card declares; a file without a declaration takes
    the bundle config's; a card that declares none, or a rule the app does not know, is refused naming the file."""
    assert bundle_2d.model.classes == AXIAL_LEVELS and class_rule(bundle_2d.model) is CLASS_RULES["axial_level"]
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
    assert model.num_classes == 3 and model.classes == AXIAL_LEVELS and class_rule(model) is CLASS_RULES["axial_level"]


def test_synthesis_2d_is_reproducible_on_the_source_grid(job, bundle_2d):
    first = synthesize(bundle_2d.model, job)
    assert first.images.shape == (5, *job.planes[0].shape) and first.nfe == 2
    assert first.details == "axial level classes [0, 1, 2]"
    np.testing.assert_array_equal(synthesize(bundle_2d.model, job).images, first.images)
    assert np.isfinite(first.images).all() and first.images.std() > 0


def test_planes_of_a_series_share_one_noise_unless_deploy_json_says_per_case(tmp_path, job, bundle_2d):
    shared = bundle_2d.model
    assert shared.noise == "per_subject" and len({c["noise_index"] for c in synthesis_cases(shared, job)}) == 1
    own = with_deploy(bundle_2d, tmp_path / "per_case", noise="per_case").model
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


def moved(planes: list[Plane], offsets, shear=(0.0, 0.0, 0.0)) -> list[Plane]:
    """Copies of ``planes`` at ``offsets`` (mm) along the first plane's normal from it, each also moved by
    ``shear`` (3,) per mm of offset (an oblique stack)."""
    first = planes[0]
    return [
        dataclasses.replace(p, position=first.position + d * (first.normal + np.asarray(shear)))
        for p, d in zip(planes, offsets)
    ]


def test_stacks_resample_an_uneven_spacing_and_come_back_on_each_plane(job):
    """Regular: the volume is the planes. Uneven: a regular grid from the first to the last plane, labels from the
    nearest plane, images linear; a linear ramp along the stack comes back exactly at each plane's offset."""
    regular = Stack.of(job.planes)
    assert regular.regular and regular.slices == 5 and regular.step == pytest.approx(4.0)
    labels = job.labels
    np.testing.assert_array_equal(regular.to_planes(regular.volume(labels, labels=True)), labels)
    np.testing.assert_array_equal(Stack.of(job.planes[::-1]).volume(labels[::-1], labels=True), labels)

    offsets = np.array([0.0, 3.0, 7.5, 11.0, 16.0])  # steps 3 to 5 mm, none a gap
    stack = Stack.of(moved(job.planes, offsets))
    assert not stack.regular and stack.slices == 5 and stack.step == pytest.approx(4.0)
    np.testing.assert_allclose(stack.offsets, offsets, atol=1e-3)
    assert stack.grid == pytest.approx([0.0, 4.0, 8.0, 12.0, 16.0])
    # labels: each slice of the grid takes the nearest plane's (0 -> 0, 4 -> 3, 8 -> 7.5, 12 -> 11, 16 -> 16)
    np.testing.assert_array_equal(stack.volume(labels, labels=True), labels)
    shuffled = Stack.of(moved(job.planes, [16.0, 0.0, 11.0, 7.5, 3.0]))
    np.testing.assert_array_equal(shuffled.volume(labels[[4, 0, 3, 2, 1]], labels=True), labels)
    # images: a linear ramp along the stack, on the grid and back to the planes' own offsets
    pattern = np.random.default_rng(0).normal(size=job.planes[0].shape).astype(np.float32)
    ramp = np.stack([pattern + 2.5 * d for d in offsets])
    volume = stack.volume(ramp, labels=False)
    np.testing.assert_allclose(volume, np.stack([pattern + 2.5 * d for d in stack.grid]), atol=1e-4)
    np.testing.assert_allclose(stack.to_planes(volume), ramp, atol=1e-4)
    np.testing.assert_allclose(shuffled.to_planes(volume), ramp[[4, 0, 3, 2, 1]], atol=1e-4)


def test_3d_synthesis_of_an_uneven_stack_writes_each_plane_on_its_own(job, bundle_3d, caplog):
    """Planes at 0, 3.5, 8, 12.5, 16 mm: the model gets the volume of the regular stack (0, 4, ..., 16 mm), and
    each plane's output is the generated image at its own offset: the regular output on the planes that lie on the
    grid, the linear mix of its two neighbours on the others."""
    model = bundle_3d.model
    regular = synthesize(model, job).images
    uneven = dataclasses.replace(job, planes=moved(job.planes, [0.0, 3.5, 8.0, 12.5, 16.0]))
    with caplog.at_level(logging.INFO, logger="motfm_deploy.stack"):
        out = synthesize(model, uneven).images
    assert "resampled an uneven stack of 5 planes (steps 3.5..4.5 mm) to a regular step 4 mm" in caplog.text
    assert out.shape == regular.shape == (5, *job.planes[0].shape)
    tolerance = 1e-3 * float(np.ptp(regular))
    np.testing.assert_allclose(out[[0, 2, 4]], regular[[0, 2, 4]], atol=tolerance)
    np.testing.assert_allclose(out[1], 0.875 * regular[1] + 0.125 * regular[0], atol=tolerance)
    np.testing.assert_allclose(out[3], 0.875 * regular[3] + 0.125 * regular[4], atol=tolerance)
    assert not np.allclose(out[1], regular[1], atol=tolerance)  # the mix is not the grid's slice


def test_3d_model_refuses_a_stack_with_a_missing_plane_or_too_few_planes(job, bundle_3d):
    model = bundle_3d.model
    kept = [0, 1, 3, 4]
    missing = Job("synthesize", "x", [job.planes[k] for k in kept], job.labels[kept])
    between = f"between {job.planes[1].where} and {job.planes[3].where} (at 4.00 and 12.00 mm along the stack"
    with pytest.raises(ValueError, match="planes are missing") as excinfo:
        synthesize(model, missing)
    assert between in str(excinfo.value) and "a step of 8 mm, the median step is 4 mm" in str(excinfo.value)
    for count in (1, 2):
        few = Job("synthesize", "x", job.planes[:count], job.labels[:count])
        with pytest.raises(ValueError, match=f"needs a stack of at least 3 planes, the series has {count}") as excinfo:
            synthesize(model, few)
        assert str(excinfo.value).startswith(job.planes[0].where)


def test_3d_model_refuses_a_stack_over_max_voxels_before_any_work(tmp_path, job, bundle_3d, monkeypatch):
    assert bundle_3d.model.max_voxels == MAX_VOXELS == 512**3
    model = with_deploy(bundle_3d, tmp_path / "small", max_voxels=5000).model
    assert model.max_voxels == 5000
    ran = []
    monkeypatch.setattr(model, "prepare", lambda *a, **k: ran.append("prepare"))
    monkeypatch.setattr(model.sampler, "generate", lambda *a, **k: ran.append("generate"))
    monkeypatch.setattr(model.network, "forward", lambda *a, **k: ran.append("network"))
    rows, columns = job.planes[0].shape
    size = f"a stack of {columns} x {rows} x 5 = {rows * columns * 5} voxels is over the limit of 5000 voxels"
    for work in (synthesize, denoise):
        with pytest.raises(ValueError, match=size) as excinfo:
            work(model, job)
        assert "max_voxels in configs/deploy.json" in str(excinfo.value)
    assert ran == []


def test_3d_model_takes_an_oblique_stack_on_its_own_axis(job, bundle_3d):
    """A sheared stack (positions moving along a row as well as the normal, as with gantry tilt): the volume's
    third axis is the step between positions, so its affine puts each slice on its plane; a plane off the line
    through the others is refused."""
    oblique = moved(job.planes, [0.0, 4.0, 8.0, 12.0, 16.0], shear=0.5 * job.planes[0].row_cosine)
    stack = Stack.of(oblique)
    assert stack.regular and stack.step == pytest.approx(np.hypot(4.0, 2.0), rel=1e-4)
    affine = np.asarray(volume_tensor(stack, job.labels.astype(np.float32), labels=True).affine)
    for k, plane in enumerate(oblique):
        np.testing.assert_allclose(affine @ [0, 0, k, 1], [*(LPS_TO_RAS @ plane.position), 1], atol=1e-3)
        corner = plane.position + plane.row_cosine * plane.spacing[1] * 3 + plane.column_cosine * plane.spacing[0] * 2
        np.testing.assert_allclose(affine @ [3, 2, k, 1], [*(LPS_TO_RAS @ corner), 1], atol=1e-3)
    out = synthesize(bundle_3d.model, dataclasses.replace(job, planes=oblique)).images
    assert out.shape == (5, *job.planes[0].shape) and np.isfinite(out).all()
    bent = [*oblique[:2], dataclasses.replace(oblique[2], position=oblique[2].position + job.planes[0].row_cosine)]
    with pytest.raises(ValueError, match="off the line through the other planes' positions") as excinfo:
        Stack.of([*bent, *oblique[3:]])
    assert str(excinfo.value).startswith(oblique[2].where)
