"""The conditional UNet: shapes in every conditioning mode, ControlNet initialisation, unknown masks."""

import pytest
import torch

from scripts.networks import ConditionalUNet

SMALL = {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 4}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    "conditioning",
    [
        {},
        {"num_classes": 3},
        {"num_labels": 4},
        {"num_labels": 4, "num_classes": 3},
        {"num_labels": 4, "mask_network": "spade"},
    ],
)
def test_output_has_the_input_shape(dims, conditioning):
    net = ConditionalUNet(dims, **SMALL, **conditioning)
    shape = (2, 1, *([8] * dims))
    kwargs = {}
    if conditioning.get("num_labels"):
        kwargs["mask"] = torch.randint(0, 4, shape)
    if conditioning.get("num_classes"):
        kwargs["cls"] = torch.tensor([0, 3])  # a class and "no class"
    out = net(torch.randn(shape), torch.rand(2) * 1000, **kwargs)
    assert out.shape == shape and torch.isfinite(out).all()
    assert net.config["mask_network"] == (
        conditioning.get("mask_network", "controlnet") if "num_labels" in conditioning else None
    )


def test_controlnet_starts_from_the_unet_weights():
    net = ConditionalUNet(2, **SMALL, num_labels=4)
    unet, control = net.unet.state_dict(), net.controlnet.state_dict()
    shared = [k for k in control if k in unet and control[k].shape == unet[k].shape]
    assert len(shared) > 20
    assert all(torch.equal(control[k], unet[k]) for k in shared)


def test_class_context_is_one_hot_with_a_no_class_token():
    net = ConditionalUNet(2, **SMALL, num_classes=3)
    ctx = net.class_context(torch.tensor([0, 2, 3]))
    assert ctx.shape == (3, 1, 4)
    assert torch.equal(ctx[:, 0], torch.eye(4)[[0, 2, 3]])


@pytest.mark.parametrize("mask_network", ["controlnet", "spade"])
def test_unknown_mask_equals_no_mask(mask_network):
    torch.manual_seed(0)
    net = ConditionalUNet(2, **SMALL, num_labels=4, mask_network=mask_network).eval()
    with torch.no_grad():
        for p in net.parameters():  # MONAI zero-initialises ControlNet outputs: make them matter
            p.add_(0.05 * torch.randn_like(p))
        x, t = torch.randn(2, 1, 8, 8), torch.rand(2) * 1000
        mask = torch.randint(0, 4, (2, 1, 8, 8))
        mixed = mask.clone()
        mixed[1] = -1
        with_mask, without, both = net(x, t, mask), net(x, t, None), net(x, t, mixed)
    assert not torch.allclose(with_mask, without, atol=1e-4)  # the mask matters
    assert torch.allclose(both[0], with_mask[0], atol=1e-6)
    assert torch.allclose(both[1], without[1], atol=1e-6)


def test_unknown_mask_network_is_refused():
    with pytest.raises(ValueError, match="mask_network"):
        ConditionalUNet(2, **SMALL, num_labels=4, mask_network="concat")


def test_bf16_autocast_on_a_cpu_uses_einsum_attention_with_the_same_result():
    torch.manual_seed(0)
    net = ConditionalUNet(2, **SMALL, num_classes=3, num_labels=4)
    with torch.no_grad():  # MONAI zero-initialises the output (and ControlNet) convolutions
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2) * 1000
    cond = {"mask": torch.randint(0, 4, (2, 1, 8, 8)), "cls": torch.tensor([0, 3])}
    attention = [m for m in net.modules() if hasattr(m, "use_flash_attention")]
    assert attention and all(m.use_flash_attention for m in attention)  # fused by default
    fused = net(x, t, **cond)
    net.autocast_dtype = torch.bfloat16
    with torch.no_grad():
        mixed = net(x, t, **cond)
    assert not any(m.use_flash_attention for m in attention)  # on a CPU under bf16: MONAI's einsum attention
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, fused, atol=0.1)
    assert not torch.equal(mixed, fused)  # it did run in bf16
    net.autocast_dtype = None
    assert torch.equal(net(x, t, **cond), fused) and all(m.use_flash_attention for m in attention)
