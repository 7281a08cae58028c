"""GLIP's VL DyHead: the deep-fusion tower plus box, centerness and region-word alignment predictions (§5-§6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glipkit.model.config import GLIPConfig
from glipkit.model.fusion import CLAMP_VALUE, TowerLayer
from glipkit.model.language import LanguageFeatures


@dataclass
class HeadOutputs:
    """Per-level predictions of the head (levels P3..P7).

    bbox_reg: (B, 4, H, W) box deltas after the per-level Scale; centerness: (B, 1, H, W) logits;
    dot_product_logits: (B, H*W, L) region-word alignment logits, rows row-major over the map;
    tower_features: (B, C, H, W) last tower layer output; proj_tokens: (B, L, C); proj_tokens_bias: (B, L);
    cls_logits: (B, num_classes-1, H, W), only when requested (unused for scoring, §6.2).
    """

    bbox_reg: list[Tensor]
    centerness: list[Tensor]
    dot_product_logits: list[Tensor]
    tower_features: list[Tensor]
    proj_tokens: Tensor
    proj_tokens_bias: Tensor
    cls_logits: list[Tensor] | None = None


class Scale(nn.Module):
    """A learned scalar multiplier (per-level box regression scale, §6.2)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class VLDyHead(nn.Module):
    """Fusion tower (`tower`) and prediction layers of GLIP, official `rpn.head` (§5.1, §6.2, §6.3)."""

    def __init__(self, cfg: GLIPConfig) -> None:
        super().__init__()
        head = cfg.head
        channels, lang_dim = head.channels, cfg.language.hidden_size
        self.use_fused_language = head.use_fused_language
        # §5.1: the last layer has no BERT layer when the alignment head does not read fused features.
        self.tower = nn.ModuleList([
            TowerLayer(cfg, with_language_layer=i < head.num_layers - 1 or head.use_fused_language)
            for i in range(head.num_layers)
        ])
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        # §6.2: kept so official checkpoints load; not used for scoring.
        self.cls_logits = nn.Conv2d(channels, head.num_classes - 1, kernel_size=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(len(head.anchor_strides))])
        self.token_projection = nn.Linear(lang_dim, channels)  # official dot_product_projection_text
        self.log_scale = nn.Parameter(torch.tensor([head.log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        prior_bias = -math.log((1 - head.prior_prob) / head.prior_prob)
        self.bias0 = nn.Parameter(torch.tensor([prior_bias]))
        for conv in (self.bbox_pred, self.centerness, self.cls_logits):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, prior_bias)

    def token_embeddings(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Projected token features (B, L, C) and per-token bias (B, L) of the alignment head (§6.3)."""
        normalized = F.normalize(embedding, p=2, dim=-1)
        # §6.3: normalised text / 2.0 into the projection; the bias reads the normalised text (no /2).
        proj_tokens = self.token_projection(normalized / 2.0)
        proj_bias = torch.matmul(normalized, self.bias_lang) + self.bias0
        return proj_tokens, proj_bias

    def forward(self, features: list[Tensor], language: LanguageFeatures,
                compute_cls_logits: bool = False) -> HeadOutputs:
        """features: FPN levels P3..P7 (NCHW); language: BERT outputs and mask."""
        visual, hidden = list(features), language.hidden
        for layer in self.tower:
            visual, hidden = layer(visual, hidden, language.mask)
        # §5.5: fused language after the last tower layer, or BERT's masked output (GLIP-T(A)).
        embedding = hidden if self.use_fused_language else language.embedded
        proj_tokens, proj_bias = self.token_embeddings(embedding)
        inv_temperature = self.log_scale.exp()

        bbox_reg, centerness, logits = [], [], []
        for level, x in enumerate(visual):
            bbox_reg.append(self.scales[level](self.bbox_pred(x)))
            centerness.append(self.centerness(x))
            # §6.3: raw visual features (identity projection), no sqrt(d), divide by exp(log_scale).
            queries = x.flatten(2).transpose(1, 2)
            logit = torch.matmul(queries, proj_tokens.transpose(-1, -2).to(queries.dtype)) / inv_temperature
            logits.append((logit + proj_bias[:, None, :]).clamp(-CLAMP_VALUE, CLAMP_VALUE))
        cls_logits = [self.cls_logits(x) for x in visual] if compute_cls_logits else None
        return HeadOutputs(bbox_reg=bbox_reg, centerness=centerness, dot_product_logits=logits,
                           tower_features=visual, proj_tokens=proj_tokens, proj_tokens_bias=proj_bias,
                           cls_logits=cls_logits)
