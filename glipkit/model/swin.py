"""Swin Transformer v1 image backbone on timm, computing exactly what GLIP's `swint.py` computes (GLIP_SPEC.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import Tensor, nn

from glipkit.model.config import SwinConfig

# §2.3 step 5: the shifted-window mask uses -100, not -inf.
SHIFT_MASK_VALUE = -100.0


def _partition_windows(x: Tensor, window: int) -> Tensor:
    """(B, Hp, Wp, C) -> (B * num_windows, window * window, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def _merge_windows(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of `_partition_windows`: (B * num_windows, window * window, C) -> (B, height, width, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Additive mask (num_windows, window², window²) of a shifted block on the padded grid (height, width) (§2.3).

    Each axis has the regions [0:-window], [-window:-shift], [-shift:]; token pairs from different regions get -100.
    """

    def region(length: int) -> Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - window).long() + (index >= length - shift).long()

    ids = (region(height)[:, None] * 3 + region(width)[None, :]).view(1, height, width, 1)
    ids = _partition_windows(ids, window).squeeze(-1)
    different = ids[:, :, None] != ids[:, None, :]
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill(different, SHIFT_MASK_VALUE)


class GLIPSwinBlock(SwinTransformerBlock):
    """timm's Swin block with GLIP's window attention: pad, then roll, masks on the padded grid (§2.3, §2.5).

    timm 1.x rolls the unpadded map and pads afterwards, which differs whenever a stage's size is not a multiple of
    the window (e.g. 200x336 at stride 4 for an 800x1344 input). Only `_attn` changes; parameters, `norm1`, the MLP
    and drop paths are timm's. timm builds its blocks inside `SwinTransformerStage`, with no hook to choose the
    block class, so `SwinBackbone` re-classes the built blocks (this subclass adds no state).
    """

    def _attn(self, x: Tensor) -> Tensor:
        """Window attention on (B, H, W, C) tokens that are already normalised by `norm1`."""
        _, height, width, channels = x.shape
        window = self.window_size[0]
        shift = self.shift_size[0]
        # §2.3 step 2: zero padding after LN1; padded tokens are not masked (their k, v are the qkv bias).
        pad_h = (window - height % window) % window
        pad_w = (window - width % window) % window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        mask = None
        if shift > 0:
            # §2.3 steps 3 and 5: roll the padded map; the mask is rebuilt for the padded size.
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, window, shift, x.device, x.dtype)
        attended = self.attn(_partition_windows(x, window), mask=mask)
        x = _merge_windows(attended.view(-1, window * window, channels), window, padded_h, padded_w)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


class SwinBackbone(nn.Module):
    """Swin-T/L feature extractor returning [C2, C3, C4, C5] as NCHW; C3..C5 pass through the output norms (§2.2).

    `swin` is timm's SwinTransformer (no classifier, no final norm); `out_norms` are GLIP's `norm1..3`.
    """

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.swin = SwinTransformer(
            patch_size=4,
            in_chans=3,
            num_classes=0,
            embed_dim=cfg.embed_dim,
            depths=tuple(cfg.depths),
            num_heads=tuple(cfg.num_heads),
            window_size=cfg.window_size,
            # §2.5: never shrink the window or drop the shift on small maps (GLIP pads them up to a full window).
            always_partition=True,
            # Any H, W divisible by 4; with it timm builds no fixed attention masks (`dynamic_mask`).
            strict_img_size=False,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            drop_rate=0.0,
            proj_drop_rate=0.0,
            attn_drop_rate=0.0,
            # §2.1: timm's stage-wise rates are the global linspace(0, rate, sum(depths)) split per stage.
            drop_path_rate=cfg.drop_path_rate,
        )
        # §2.2: GLIP's backbone has no final norm and no head.
        self.swin.norm = nn.Identity()
        self.swin.head = nn.Identity()
        for stage in self.swin.layers:
            for index, block in enumerate(stage.blocks):
                if type(block) is not SwinTransformerBlock:
                    raise TypeError(f"unexpected timm Swin block type {type(block).__name__}")
                block.__class__ = GLIPSwinBlock
                # §2.2: even blocks use plain windows, odd blocks shift by window // 2.
                expected_shift = 0 if index % 2 == 0 else cfg.window_size // 2
                if block.window_size != (cfg.window_size,) * 2 or block.shift_size != (expected_shift,) * 2:
                    raise RuntimeError(f"timm changed the Swin window to {block.window_size}/{block.shift_size}")
        # §2.2: `norm0` is Identity for the RETINANET conv body; norm1..3 normalise stages 3..5.
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in cfg.stage_channels[1:])
        self.frozen_at = -1
        self.channels_last = False
        self.set_speed(fused_attention=False, channels_last=False)

    def set_speed(self, fused_attention: bool, channels_last: bool) -> None:
        """Window attention through scaled_dot_product_attention (timm's `fused_attn` path; Swin has no clamp to
        keep) or explicit matmul-softmax; outputs as channels-last views of Swin's NHWC tokens or contiguous NCHW."""
        for stage in self.swin.layers:
            for block in stage.blocks:
                block.attn.fused_attn = fused_attention
        self.channels_last = channels_last

    def freeze(self, frozen_at: int) -> None:
        """Freeze like GLIP's `BACKBONE.FREEZE_CONV_BODY_AT` (§2.1): -1 nothing, >= 0 the patch embedding,
        k >= 2 also GLIP stages 0..k-2; frozen parameters get requires_grad=False and frozen parts stay in eval
        mode (no drop path) while training.
        """
        self.frozen_at = frozen_at
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_at < 0:
            return []
        modules: list[nn.Module] = [self.swin.patch_embed]
        for stage in range(min(self.frozen_at - 1, len(self.swin.layers))):
            # A GLIP stage is timm's blocks of that stage plus the PatchMerging timm puts at the next stage (§2.5).
            modules.append(self.swin.layers[stage].blocks)
            if stage + 1 < len(self.swin.layers):
                modules.append(self.swin.layers[stage + 1].downsample)
        return modules

    def train(self, mode: bool = True) -> "SwinBackbone":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of [C2, C3, C4, C5]."""
        return self.cfg.stage_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) BGR-normalised -> [C2 (no norm), C3, C4, C5], strides 4, 8, 16, 32, NCHW."""
        # §2.2: patch embed pads right/bottom to a multiple of 4 (never needed for inputs padded to 32).
        pad_h = -images.shape[-2] % 4
        pad_w = -images.shape[-1] % 4
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = self.swin.patch_embed(images)  # (B, H/4, W/4, C) after patch_embed.norm
        stage_outputs = []
        for stage in self.swin.layers:
            # timm merges patches at the start of stages 1..3, so each output is GLIP's pre-merge `x_out` (§2.5).
            x = stage(x)
            stage_outputs.append(x)
        # Swin's tokens are NHWC: the permuted view is already channels-last, contiguous NCHW needs a copy.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        features = [stage_outputs[0].permute(0, 3, 1, 2).contiguous(memory_format=layout)]
        for norm, out in zip(self.out_norms, stage_outputs[1:]):
            features.append(norm(out).permute(0, 3, 1, 2).contiguous(memory_format=layout))
        return features
