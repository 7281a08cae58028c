"""One layer of GLIP's language-aware deep-fusion tower: X-MHA, an in-head BERT layer, DyConv (GLIP_SPEC.md §5).

Every quirk of the official `vldyhead.py` / `fuse_helper.py` that changes numbers is reproduced and marked
with its spec section; the state-dict names are the ones `glipkit.model.weights` maps official keys to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import deform_conv2d

from glipkit.model.config import GLIPConfig, LanguageConfig, SpeedConfig

# §5.2, §5.3, §6.3: the official code clamps scores and activations to this range (fp16 safety).
CLAMP_VALUE = 50000.0
# §5.2: text->image attention adds -9e15 at padded tokens (and +1, a no-op shift, at real ones).
_FUSION_MASK_VALUE = -9e15


def clamp_cannot_bite(query: Tensor, key: Tensor, scale: float = 1.0) -> bool:
    """True when no score `scale * q.k` of these (..., N, d) queries and keys can reach half of CLAMP_VALUE.

    Cauchy-Schwarz: |q.k| <= |q| |k|, so the largest |score| is at most scale * max|q| * max|k| per batch and head.
    Below CLAMP_VALUE the official clamps (§5.2 steps 3-4, §5.3 step 3) are the identity; the factor 2 covers the
    rounding of low-precision scores and makes X-MHA's second clamp (row max minus score) the identity too. One
    device-to-host sync per call.
    """
    q_norm = query.detach().float().norm(dim=-1).amax(dim=-1)
    k_norm = key.detach().float().norm(dim=-1).amax(dim=-1)
    return bool((q_norm * k_norm).amax() * scale < CLAMP_VALUE / 2)


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid relu6(x + 3) / 6, as used by DyHead's scale attention and DyReLU (§5.4)."""
    return F.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    """Module form of `h_sigmoid`."""

    def forward(self, x: Tensor) -> Tensor:
        return h_sigmoid(x)


# ----------------------------------------------------------------------------------------------------------
# X-MHA (§5.2)
# ----------------------------------------------------------------------------------------------------------


class BiMultiHeadAttention(nn.Module):
    """Bidirectional attention between visual tokens and text tokens; returns the two updates (§5.2)."""

    def __init__(self, visual_dim: int, lang_dim: int, embed_dim: int = 2048, num_heads: int = 8,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.use_sdpa = False  # SpeedConfig.fusion_sdpa
        self.dropout = dropout
        self.v_proj = nn.Linear(visual_dim, embed_dim)
        self.l_proj = nn.Linear(lang_dim, embed_dim)
        self.values_v_proj = nn.Linear(visual_dim, embed_dim)
        self.values_l_proj = nn.Linear(lang_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, visual_dim)
        self.out_l_proj = nn.Linear(embed_dim, lang_dim)
        for linear in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                       self.out_l_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """(B, N, E) -> (B * heads, N, head_dim)."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2).reshape(b * self.num_heads, n,
                                                                                  self.head_dim)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        """(B * heads, N, head_dim) -> (B, N, E)."""
        n = x.shape[1]
        return x.view(batch, self.num_heads, n, self.head_dim).transpose(1, 2).reshape(batch, n, self.embed_dim)

    def forward(self, visual: Tensor, lang: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """visual (B, Nv, Cv), lang (B, L, D), mask (B, L) 1 = real token -> (delta_visual, delta_lang)."""
        batch, num_visual, _ = visual.shape
        num_tokens = lang.shape[1]
        query = self._heads(self.v_proj(visual) * self.scale)
        key = self._heads(self.l_proj(lang))
        value_v = self._heads(self.values_v_proj(visual))
        value_l = self._heads(self.values_l_proj(lang))
        if self.use_sdpa and clamp_cannot_bite(query, key):
            return self._fused(query, key, value_v, value_l, mask, batch)

        scores = torch.bmm(query, key.transpose(1, 2))  # (B*h, Nv, L)
        scores = scores.clamp(-CLAMP_VALUE, CLAMP_VALUE)  # §5.2 step 3

        # §5.2 step 4: image->text softmax over ALL visual tokens (padded pixels too), no mask.
        scores_t = scores.transpose(1, 2)
        scores_l = (scores_t - scores_t.max(dim=-1, keepdim=True)[0]).clamp(-CLAMP_VALUE, CLAMP_VALUE)
        probs_l = scores_l.softmax(dim=-1)

        # §5.2 step 5: text->image softmax over tokens; -9e15 at padding, +1 (sic) at real tokens.
        if mask is not None:
            additive = torch.where(mask == 0, _FUSION_MASK_VALUE, mask.to(torch.float32)).to(torch.float32)
            scores = scores.view(batch, self.num_heads, num_visual, num_tokens) + additive[:, None, None, :]
            scores = scores.view(batch * self.num_heads, num_visual, num_tokens)
        probs_v = scores.softmax(dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training).to(value_l.dtype)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training).to(value_v.dtype)
        out_v = self._merge(torch.bmm(probs_v, value_l), batch)
        out_l = self._merge(torch.bmm(probs_l, value_v), batch)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)

    def _fused(self, query: Tensor, key: Tensor, value_v: Tensor, value_l: Tensor, mask: Tensor | None,
               batch: int) -> tuple[Tensor, Tensor]:
        """`forward` by scaled_dot_product_attention, exact when `clamp_cannot_bite`: both clamps are then the
        identity and softmax ignores the image->text row-max shift; the query already carries the 1/sqrt(d)."""
        q, k, v_v, v_l = (t.view(batch, self.num_heads, -1, self.head_dim) for t in (query, key, value_v, value_l))
        additive = None
        if mask is not None:
            additive = torch.where(mask == 0, _FUSION_MASK_VALUE, mask.to(torch.float32))
            additive = additive[:, None, None, :].to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        out_v = F.scaled_dot_product_attention(q, k, v_l, attn_mask=additive, dropout_p=dropout, scale=1.0)
        out_l = F.scaled_dot_product_attention(k, q, v_v, dropout_p=dropout, scale=1.0)
        out_v = out_v.transpose(1, 2).reshape(batch, -1, self.embed_dim)
        out_l = out_l.transpose(1, 2).reshape(batch, -1, self.embed_dim)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


class BiAttentionBlock(nn.Module):
    """X-MHA over all pyramid levels at once, with layer scale; official `VLFuse.b_attn` (§5.2)."""

    def __init__(self, visual_dim: int, lang_dim: int, embed_dim: int = 2048, num_heads: int = 8,
                 dropout: float = 0.1, init_gamma: float = 1.0 / 6) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(visual_dim)
        self.layer_norm_l = nn.LayerNorm(lang_dim)
        self.attn = BiMultiHeadAttention(visual_dim, lang_dim, embed_dim, num_heads, dropout)
        self.gamma_v = nn.Parameter(torch.full((visual_dim,), init_gamma))
        self.gamma_l = nn.Parameter(torch.full((lang_dim,), init_gamma))
        self.channels_last = False  # SpeedConfig.channels_last: levels come and go in channels-last memory format

    def forward(self, visual: list[Tensor], hidden: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
        """visual: NCHW per level; hidden (B, L, D); mask (B, L) -> (updated levels, updated hidden)."""
        # §5.2: levels flattened row-major and concatenated P3 first into one visual sequence.
        sizes = [f.shape[-2:] for f in visual]
        if self.channels_last:  # the same tokens, read without a copy from channels-last levels
            tokens = torch.cat([f.permute(0, 2, 3, 1).flatten(1, 2) for f in visual], dim=1)
        else:
            tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in visual], dim=1)
        v = self.layer_norm_v(tokens)
        lang = self.layer_norm_l(hidden)
        delta_v, delta_l = self.attn(v, lang, mask)
        # §5.2 step 7 (quirk): the residual carries the normalised inputs, not the raw ones.
        v = v + self.gamma_v * delta_v
        lang = lang + self.gamma_l * delta_l
        if self.channels_last:
            levels = v.split([h * w for h, w in sizes], dim=1)
            out = [level.reshape(level.shape[0], h, w, level.shape[2]).permute(0, 3, 1, 2)
                   .contiguous(memory_format=torch.channels_last) for level, (h, w) in zip(levels, sizes)]
            return out, lang
        # Contiguous NCHW like the official code (a channels-last view changes the convs' summation order).
        v = v.transpose(1, 2).contiguous()
        levels = v.split([h * w for h, w in sizes], dim=2)
        out = [level.reshape(level.shape[0], level.shape[1], h, w).contiguous()
               for level, (h, w) in zip(levels, sizes)]
        return out, lang


# ----------------------------------------------------------------------------------------------------------
# In-head BERT layer (§5.3)
# ----------------------------------------------------------------------------------------------------------


class _BertSelfAttention(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} not divisible by {cfg.num_attention_heads} heads")
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        self.use_sdpa = False  # SpeedConfig.fusion_sdpa

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        if self.use_sdpa and clamp_cannot_bite(q, k, 1.0 / math.sqrt(self.head_dim)):
            # The additive mask is 0 or finfo.min, i.e. a key-padding mask (every prompt has real tokens).
            keep = additive_mask == 0
            dropout = self.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout).transpose(1, 2)
            return context.reshape(context.shape[0], context.shape[1], -1)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.clamp(-CLAMP_VALUE, CLAMP_VALUE)  # §5.3: clamped BEFORE the mask is added
        probs = self.dropout((scores + additive_mask).softmax(dim=-1)).to(v.dtype)
        context = torch.matmul(probs, v).transpose(1, 2)
        return context.reshape(context.shape[0], context.shape[1], -1)


class _BertSelfOutput(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _BertAttention(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.self = _BertSelfAttention(cfg)
        self.output = _BertSelfOutput(cfg)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        return self.output(self.self(hidden, additive_mask), hidden)


class _BertIntermediate(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACT2FN[cfg.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        # §5.3 step 5: clamp before and after the activation.
        return self.act(self.dense(x).clamp(-CLAMP_VALUE, CLAMP_VALUE)).clamp(-CLAMP_VALUE, CLAMP_VALUE)


class _BertOutput(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        # §5.3 step 6: clamp after dropout and after the LayerNorm.
        x = self.dropout(self.dense(x)).clamp(-CLAMP_VALUE, CLAMP_VALUE)
        return self.LayerNorm(x + residual).clamp(-CLAMP_VALUE, CLAMP_VALUE)


class FusionBertLayer(nn.Module):
    """Post-LN BERT layer with GLIP's clamps, official `BertEncoderLayer`; submodule names as HF `BertLayer` (§5.3).

    Newly initialised in GLIP (PyTorch default init), sized by the language config.
    """

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.attention = _BertAttention(cfg)
        self.intermediate = _BertIntermediate(cfg)
        self.output = _BertOutput(cfg)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """hidden (B, L, D), mask (B, L) 1 = real token -> (B, L, D)."""
        # §5.3 step 2: HF's extended mask (1 - m) * finfo.min, kept in fp32 so it never overflows.
        additive = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        attention_output = self.attention(hidden, additive)
        return self.output(self.intermediate(attention_output), attention_output)


# ----------------------------------------------------------------------------------------------------------
# DyConv (§5.4)
# ----------------------------------------------------------------------------------------------------------


def offsets_for_output(offset: Tensor, out_size: tuple[int, int]) -> Tensor:
    """The offset (or mask) map a deformable conv with output `out_size` reads in the official CUDA kernel.

    §5.4 (offset quirk): the kernel indexes each sample's offsets as a flat array laid out for the *output*
    size, so when a finer level's offsets are passed to the coarser level's conv it uses the first
    C*Ho*Wo values of each sample (channel-major), reshaped to (C, Ho, Wo). Not a crop, not a resize.
    """
    b, c, h, w = offset.shape
    out_h, out_w = out_size
    if (h, w) == (out_h, out_w):
        return offset
    if out_h * out_w > h * w:
        raise ValueError(f"offset map {h}x{w} is smaller than the conv output {out_h}x{out_w}")
    return offset.reshape(b, -1)[:, : c * out_h * out_w].reshape(b, c, out_h, out_w)


class ModulatedDeformConv3x3(nn.Module):
    """DCNv2 3x3 conv (pad 1) with bias, always computed in fp32 (official `ModulatedDeformConv`, §5.4)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # Official init: uniform(+-1/sqrt(fan_in)), bias 0 (DyConv's N(0, 0.01) loop only hits nn.Conv2d).
        bound = 1.0 / math.sqrt(in_channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        out_size = self.output_size(x.shape[-2], x.shape[-1])
        offset = offsets_for_output(offset, out_size)
        mask = offsets_for_output(mask, out_size)
        # §5.4: the official op is `custom_fwd(cast_inputs=float32)`, so DCN runs in fp32 under autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return deform_conv2d(x.float(), offset.float(), self.weight.float(), self.bias.float(),
                                 stride=(self.stride, self.stride), padding=(1, 1), mask=mask.float())

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size=3, stride={self.stride}, padding=1"


class DeformConvNorm(nn.Module):
    """Deformable 3x3 conv followed by GroupNorm, no activation (official `Conv3x3Norm`, §5.4)."""

    def __init__(self, channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv3x3(channels, channels, stride)
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.norm(self.conv(x, offset, mask))


class ScaleAttention(nn.Module):
    """Scale-aware attention: h_sigmoid(relu(conv1x1(global average pool))), one scalar per sample (§5.4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.normal_(self.conv.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return h_sigmoid(F.relu(self.conv(F.adaptive_avg_pool2d(x, 1))))


class DyReLU(nn.Module):
    """DyReLU-B task-aware activation: max of two per-sample, per-channel affine maps (§5.4)."""

    def __init__(self, channels: int, reduction: int = 4, lambda_a: float = 2.0) -> None:
        super().__init__()
        self.channels = channels
        self.lambda_a = lambda_a
        # fc.0 / fc.2 are the official `relu.fc.0` / `relu.fc.2`; the output has 4 coefficient groups.
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, 4 * channels), HSigmoid())

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, self.channels, dim=1)
        # init_a = (1, 0), init_b = (0, 0).
        a1 = (a1 - 0.5) * self.lambda_a + 1.0
        a2 = (a2 - 0.5) * self.lambda_a
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.max(x * a1 + b1, x * a2 + b2)


class DyConv(nn.Module):
    """DyHead's vision block: deformable convs across neighbouring levels, scale attention, DyReLU (§5.4).

    convs.0 runs on the coarser level (then upsampled), convs.1 on the same level, convs.2 (stride 2) on the
    finer level; all three use the offsets/mask computed from the current level by `offset`.
    """

    def __init__(self, channels: int, groups: int = 16) -> None:
        super().__init__()
        self.convs = nn.ModuleList([DeformConvNorm(channels, 1, groups), DeformConvNorm(channels, 1, groups),
                                    DeformConvNorm(channels, 2, groups)])
        # The offset conv keeps PyTorch's default init (OFFICIAL_CODE_NOTES "Initialisations").
        self.offset = nn.Conv2d(channels, 27, kernel_size=3, stride=1, padding=1)
        self.scale_attention = ScaleAttention(channels)
        self.dyrelu = DyReLU(channels)

    def forward(self, visual: list[Tensor]) -> list[Tensor]:
        """visual: NCHW per level (P3..P7) -> the same shapes."""
        outputs = []
        for level, feature in enumerate(visual):
            offset_mask = self.offset(feature)
            # §5.4: channels 0..17 are interleaved (dy, dx) offsets, 18..26 mask logits.
            offset = offset_mask[:, :18]
            mask = offset_mask[:, 18:].sigmoid()
            sources = [self.convs[1](feature, offset, mask)]
            if level > 0:
                sources.append(self.convs[2](visual[level - 1], offset, mask))
            if level < len(visual) - 1:
                # §5.4: coarser level with the re-interpreted offsets, then align_corners=True upsampling.
                coarse = self.convs[0](visual[level + 1], offset, mask)
                sources.append(F.interpolate(coarse, size=feature.shape[-2:], mode="bilinear", align_corners=True))
            weights = torch.stack([self.scale_attention(s) for s in sources])
            # §5.4: MEAN (not sum) over the 2 or 3 sources, each weighted by its scale attention.
            outputs.append(torch.mean(torch.stack(sources) * weights, dim=0))
        return [self.dyrelu(x) for x in outputs]


# ----------------------------------------------------------------------------------------------------------
# Tower layer (§5.1)
# ----------------------------------------------------------------------------------------------------------


class TowerLayer(nn.Module):
    """One tower layer: X-MHA -> BERT layer -> DyConv (§5.1); without early fusion only DyConv.

    `fusion`, `language_layer` and `dyconv` are called as modules, so forward hooks see each output.
    """

    def __init__(self, cfg: GLIPConfig, with_language_layer: bool = True) -> None:
        super().__init__()
        head = cfg.head
        self.use_checkpoint = head.use_checkpoint
        self.fusion: BiAttentionBlock | None = None
        self.language_layer: FusionBertLayer | None = None
        if head.early_fusion:
            self.fusion = BiAttentionBlock(head.channels, cfg.language.hidden_size, head.fusion_embed_dim,
                                           head.fusion_num_heads, head.fusion_dropout,
                                           init_gamma=1.0 / head.num_layers)
            if with_language_layer:
                self.language_layer = FusionBertLayer(cfg.language)
        self.dyconv = DyConv(head.channels, head.group_norm_groups)
        self.set_speed(cfg.speed)

    def set_speed(self, speed: SpeedConfig) -> None:
        """Switch the fusion levers of `speed`: SDPA attention and channels-last levels (compile: GLIP.set_speed)."""
        if self.fusion is not None:
            self.fusion.attn.use_sdpa = speed.fusion_sdpa
            self.fusion.channels_last = speed.channels_last
        if self.language_layer is not None:
            self.language_layer.attention.self.use_sdpa = speed.fusion_sdpa
        self.to(memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)

    def forward(self, visual: list[Tensor], hidden: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
        """visual: NCHW per level; hidden (B, L, D); mask (B, L) -> (visual, hidden) after this layer."""
        if self.fusion is not None:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                # §5.2: the only activation checkpointing in GLIP (memory only, same numbers).
                visual, hidden = checkpoint(self.fusion, visual, hidden, mask, use_reentrant=False)
            else:
                visual, hidden = self.fusion(visual, hidden, mask)
        if self.language_layer is not None:
            hidden = self.language_layer(hidden, mask)
        return self.dyconv(visual), hidden
