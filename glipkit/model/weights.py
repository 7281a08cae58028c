"""Official GLIP checkpoint keys <-> glipkit module names (GLIP_SPEC.md §2.4-2.5, §3, §5, §6, §10-11)."""

from __future__ import annotations

import re

# Keys of official checkpoints that glipkit recomputes or does not use: tolerated and dropped when loading.
_DROPPED_KEY_PATTERNS = [
    re.compile(r"^backbone\.body\..*\.relative_position_index$"),  # recomputed by timm (§2.5)
    re.compile(r"^backbone\.body\..*\.attn_mask$"),
    re.compile(r"^rpn\.anchor_generator\.cell_anchors\.\d+$"),  # recomputed (§6.1)
    re.compile(r"^language_backbone\.body\.model\.embeddings\.position_ids$"),  # old transformers (§10)
    re.compile(r"^language_backbone\.body\.model\.pooler\."),  # BERT is built without a pooler (§4.1)
]

# (official regex, glipkit template) for everything outside the fusion tower, tried in order.
_RENAMES = [
    (r"^backbone\.body\.layers\.(\d+)\.downsample\.(.*)$", None),  # handled in code: stage index + 1
    (r"^backbone\.body\.norm([123])\.(.*)$", None),  # handled in code: out_norms.{k-1}
    (r"^backbone\.body\.(.*)$", r"backbone.swin.\1"),
    (r"^backbone\.fpn\.fpn_inner([234])\.(.*)$", None),
    (r"^backbone\.fpn\.fpn_layer([234])\.(.*)$", None),
    (r"^backbone\.fpn\.top_blocks\.(p6|p7)\.(.*)$", r"fpn.\1.\2"),
    (r"^language_backbone\.body\.model\.(.*)$", r"language_backbone.bert.\1"),
    (r"^rpn\.head\.dyhead_tower\.(\d+)\.(.*)$", None),  # handled in code: tower layer + part
    (r"^rpn\.head\.dot_product_projection_text\.(.*)$", r"head.token_projection.\1"),
    (r"^rpn\.head\.(bbox_pred|centerness|cls_logits|scales|log_scale|bias_lang|bias0)(.*)$", r"head.\1\2"),
    (r"^rpn\.tunable_linear\.weight$", r"prompt_tuning.weight"),
]
_RENAMES = [(re.compile(p), t) for p, t in _RENAMES]

# Sub-module names inside one DyConv block of the tower.
_DYCONV_RENAMES = [
    (re.compile(r"^DyConv\.(\d)\.conv\.(.*)$"), r"convs.\1.conv.\2"),
    (re.compile(r"^DyConv\.(\d)\.bn\.(.*)$"), r"convs.\1.norm.\2"),
    (re.compile(r"^offset\.(.*)$"), r"offset.\1"),
    (re.compile(r"^AttnConv\.1\.(.*)$"), r"scale_attention.conv.\1"),
    (re.compile(r"^relu\.fc\.(\d)\.(.*)$"), r"dyrelu.fc.\1.\2"),
]


def is_dropped_official_key(key: str) -> bool:
    """True for official keys glipkit tolerates and ignores (buffers it recomputes, the unused BERT pooler)."""
    return any(p.match(key) for p in _DROPPED_KEY_PATTERNS)


def official_to_glipkit_key(key: str, early_fusion: bool = True) -> str:
    """The glipkit parameter name of an official key (without `module.`); raises KeyError if it has none.

    The official fusion tower is one flat Sequential: with early fusion, module 3i is X-MHA, 3i+1 the BERT
    layer and 3i+2 the DyConv of layer i; without it (GLIP-T(A)), module i is the DyConv of layer i (§5.1).
    """
    for pattern, template in _RENAMES:
        match = pattern.match(key)
        if not match:
            continue
        if template is not None:
            return match.expand(template)
        if key.startswith("backbone.body.layers."):
            # timm puts PatchMerging at the start of the next stage (§2.5).
            return f"backbone.swin.layers.{int(match.group(1)) + 1}.downsample.{match.group(2)}"
        if key.startswith("backbone.body.norm"):
            return f"backbone.out_norms.{int(match.group(1)) - 1}.{match.group(2)}"
        if key.startswith("backbone.fpn.fpn_inner"):
            return f"fpn.lateral_convs.{int(match.group(1)) - 2}.{match.group(2)}"
        if key.startswith("backbone.fpn.fpn_layer"):
            return f"fpn.output_convs.{int(match.group(1)) - 2}.{match.group(2)}"
        if key.startswith("rpn.head.dyhead_tower."):
            return _tower_key(int(match.group(1)), match.group(2), early_fusion, key)
    raise KeyError(f"official key '{key}' has no glipkit equivalent")


def _tower_key(module_index: int, rest: str, early_fusion: bool, key: str) -> str:
    if early_fusion:
        layer, part = divmod(module_index, 3)
    else:
        layer, part = module_index, 2
    if part == 0:
        if not rest.startswith("b_attn."):
            raise KeyError(f"official key '{key}' has no glipkit equivalent")
        return f"head.tower.{layer}.fusion.{rest[len('b_attn.'):]}"
    if part == 1:
        return f"head.tower.{layer}.language_layer.{rest}"
    for pattern, template in _DYCONV_RENAMES:
        match = pattern.match(rest)
        if match:
            return f"head.tower.{layer}.dyconv.{match.expand(template)}"
    raise KeyError(f"official key '{key}' has no glipkit equivalent")
