"""Feature pyramid on Swin's C3..C5 with the RetinaNet P6/P7 levels, as GLIP builds it (GLIP_SPEC.md §3)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropBlock2D(nn.Module):
    """DropBlock (Ghiasi et al. 2018) in training mode only: zeroes block_size² squares shared by all channels.

    Seeds are drawn with probability drop_prob / block_size², grown to blocks by a stride-1 max-pool, and the kept
    values are rescaled by (number of positions) / (number kept), as GLIP's `layers/dropblock.py` does (§3).
    """

    def __init__(self, drop_prob: float, block_size: int) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        batch, _, height, width = x.shape
        gamma = self.drop_prob / self.block_size**2
        seeds = (torch.rand(batch, 1, height, width, device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(seeds, kernel_size=self.block_size, stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]
        keep = 1.0 - dropped
        # Guard the (astronomically unlikely) all-dropped map, where the original divides by zero.
        scale = keep.numel() / keep.sum(dtype=torch.float32).clamp(min=1.0)
        return x * keep * scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class FPN(nn.Module):
    """Top-down FPN over [C3, C4, C5] plus P6 = conv(P5) and P7 = conv(relu(P6)); returns [P3..P7] (§3).

    Plain convs with bias, no norm or activation; all outputs have `out_channels` channels.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, drop_block: bool = True) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in self.in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in self.in_channels
        )
        # §3: LastLevelP6P7 with in == out channels takes P5 (the FPN output), not C5.
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        # §3: MODEL.FPN.DROP_BLOCK defaults to True: DropBlock2D(0.3, 3) on the merged maps, training only.
        self.drop_block = DropBlock2D(0.3, 3) if drop_block else None
        for conv in [*self.lateral_convs, *self.output_convs, self.p6, self.p7]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """[C3, C4, C5] (NCHW) -> [P3, P4, P5, P6, P7] (NCHW, strides 8..128)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps (C3..C5), got {len(features)}")
        merged = self.lateral_convs[-1](features[-1])
        outputs = [self.output_convs[-1](merged)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[level](features[level])
            top_down = merged
            if top_down.shape[-2:] != lateral.shape[-2:]:
                # §3: nearest resize to the lateral's size (not a fixed x2).
                top_down = F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            # §3: DropBlock only feeds this level's output conv; the top-down path keeps the undropped map.
            conv_input = self.drop_block(merged) if self.drop_block is not None else merged
            outputs.insert(0, self.output_convs[level](conv_input))
        p6 = self.p6(outputs[-1])
        p7 = self.p7(F.relu(p6))
        return [*outputs, p6, p7]
