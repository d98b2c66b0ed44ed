"""The one network every variant uses: MONAI's DiffusionModelUNet with optional class and mask conditioning.

- class: a one-hot vector of ``num_classes + 1`` entries is the cross-attention context; the last entry is the
  "no class" token that condition dropout trains, so sampling can use classifier-free guidance;
- mask: a label map, one-hot encoded, drives either a ControlNet (initialised from the UNet's weights and
  trained jointly, as in MOTFM) or the SPADE normalisation of ``SPADEDiffusionModelUNet``. Negative labels mean
  "unknown": they one-hot to zeros, and a case with no known pixel gets no ControlNet residuals. Condition dropout
  trains that case, so one mask-conditioned model also gives the unconditional field (e.g. for denoising).

The same module serves flow matching (it predicts a velocity) and the DDPM baseline (it predicts noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import ControlNet, DiffusionModelUNet, SPADEDiffusionModelUNet
from monai.networks.utils import copy_model_state
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

MASK_NETWORKS = ("controlnet", "spade")
AUTOCAST_DTYPES = (None, "bfloat16")


class ConditionalUNet(nn.Module):
    """UNet ``f(x, timesteps, mask, cls)`` with output of the shape of ``x``.

    Args:
        spatial_dims: 2 or 3.
        channels: feature channels per UNet level.
        attention_levels: whether each level has (self/cross) attention.
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head.
        norm_num_groups: group-norm groups (must divide every entry of ``channels``).
        num_classes: number of classes for class conditioning; 0 for none.
        num_labels: number of mask labels (background included) for mask conditioning; 0 for none.
        mask_network: "controlnet" or "spade".
        in_channels: image channels.
        activation_checkpointing: recompute each UNet (and ControlNet) block's activations in the backward pass
            instead of keeping them: less memory for large (3D) inputs, about a third more compute. It changes
            neither the weights' names nor ``config``.
        autocast_dtype: "bfloat16": the network runs under ``torch.autocast`` on the input's device (for a CPU with
            AVX512-BF16 or AMX, where MONAI's trainer, whose AMP is CUDA only, cannot); the weights stay float32 and
            the output comes back in the input's dtype. None (default): as called. Like ``activation_checkpointing``
            it is not part of ``config``.

    Attention runs through PyTorch's ``scaled_dot_product_attention`` (MONAI's ``use_flash_attention``): the same
    weights and results up to float rounding as MONAI's einsum attention, with less memory and, on a CPU in float32,
    a faster backward pass. Under bfloat16 autocast on a CPU, where the fused kernel's backward pass is the slower
    one (``bench/reference_compare.py --profile``), the network uses MONAI's einsum attention instead.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int] = (32, 64, 64, 64),
        attention_levels: Sequence[bool] = (False, False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
        num_classes: int = 0,
        num_labels: int = 0,
        mask_network: str = "controlnet",
        in_channels: int = 1,
        activation_checkpointing: bool = False,
        autocast_dtype: str | None = None,
    ) -> None:
        super().__init__()
        if mask_network not in MASK_NETWORKS:
            raise ValueError(f"mask_network must be one of {MASK_NETWORKS}, got {mask_network!r}")
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be one of {AUTOCAST_DTYPES}, got {autocast_dtype!r}")
        self.autocast_dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
        self.config = {
            "spatial_dims": spatial_dims,
            "channels": list(channels),
            "attention_levels": list(attention_levels),
            "num_res_blocks": num_res_blocks,
            "num_head_channels": num_head_channels,
            "norm_num_groups": norm_num_groups,
            "num_classes": num_classes,
            "num_labels": num_labels,
            "mask_network": mask_network if num_labels else None,
            "in_channels": in_channels,
        }
        self.num_classes, self.num_labels = num_classes, num_labels
        common = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "channels": tuple(channels),
            "attention_levels": tuple(attention_levels),
            "num_res_blocks": num_res_blocks,
            "num_head_channels": num_head_channels,
            "norm_num_groups": norm_num_groups,
            "with_conditioning": num_classes > 0,
            "cross_attention_dim": num_classes + 1 if num_classes else None,
            "use_flash_attention": True,
        }
        self.controlnet: ControlNet | None = None
        if num_labels and mask_network == "spade":
            self.unet = SPADEDiffusionModelUNet(out_channels=in_channels, label_nc=num_labels, **common)
        else:
            self.unet = DiffusionModelUNet(out_channels=in_channels, **common)
        if num_labels and mask_network == "controlnet":
            self.controlnet = ControlNet(
                conditioning_embedding_in_channels=num_labels, conditioning_embedding_num_channels=(16,), **common
            )
            copy_model_state(self.controlnet, self.unet.state_dict(), inplace=True)
        self._attention = [m for m in self.modules() if hasattr(m, "use_flash_attention")]
        if activation_checkpointing:
            blocks = {id(b) for net in (self.unet, self.controlnet) if net is not None for b in _blocks(net)}
            apply_activation_checkpointing(self, check_fn=lambda m: id(m) in blocks)

    def class_context(self, cls: torch.Tensor) -> torch.Tensor:
        """One-hot context (B, 1, num_classes + 1) from class indices (B,); index ``num_classes`` means no class."""
        return F.one_hot(cls.long().view(-1), self.num_classes + 1).float().unsqueeze(1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        cls: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: images (B, C, *spatial).
            timesteps: (B,) on MONAI's 0..1000 scale (floats allowed).
            mask: integer label map (B, 1, *spatial) with values in [0, num_labels), negative for unknown; None (or
                all unknown) for no mask.
            cls: class indices (B,) in [0, num_classes] (num_classes = no class); None for no class.
        Returns:
            (B, C, *spatial): the velocity (flow matching) or noise (DDPM) prediction.
        """
        fused = self.autocast_dtype is None or x.device.type != "cpu"
        if self._attention and self._attention[0].use_flash_attention != fused:
            for block in self._attention:
                block.use_flash_attention = fused
        if self.autocast_dtype is None:
            return self._predict(x, timesteps, mask, cls)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self._predict(x, timesteps, mask, cls).to(x.dtype)

    def _predict(
        self, x: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor | None, cls: torch.Tensor | None
    ) -> torch.Tensor:
        """``forward`` without the autocast."""
        if self.num_classes and cls is None:
            cls = torch.full((x.shape[0],), self.num_classes, device=x.device)
        context = self.class_context(cls) if self.num_classes else None
        if not self.num_labels or (mask is None and self.controlnet is not None):
            return self.unet(x, timesteps, context=context)
        if mask is None:
            mask = torch.full_like(x[:, :1], -1)
        known = mask >= 0
        onehot = F.one_hot(mask[:, 0].clamp(min=0).long(), self.num_labels).movedim(-1, 1).to(x.dtype) * known
        if self.controlnet is None:
            return self.unet(x, timesteps, seg=onehot, context=context)
        # a case with no known pixel gets no residuals: the gate (B, 1, ..., 1) is the ControlNet's own output scale
        gate = known.flatten(1).any(1).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        down, mid = self.controlnet(x, timesteps, controlnet_cond=onehot, conditioning_scale=gate, context=context)
        return self.unet(
            x, timesteps, context=context, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )


def _blocks(net: nn.Module) -> list[nn.Module]:
    """The down, middle and up blocks of a MONAI diffusion UNet or ControlNet."""
    return [*net.down_blocks, net.middle_block, *getattr(net, "up_blocks", [])]
