"""GLIP's unified grounding loss: ATSS assignment, token focal loss, GIoU and centerness (GLIP_SPEC.md §8).

The loss works on the head outputs of a padded batch (one anchor grid for all images) and per-image targets:
GT boxes in the network-input frame and a binary positive map over the prompt's token positions (§4.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glipkit.model.boxes import BoxCoder, box_iou


@dataclass
class GroundingTargets:
    """Targets of one image.

    boxes: (G, 4) absolute xyxy in the network-input (resized, unpadded) pixel frame, +1 convention.
    positive_map: (G, L) over token positions; any value > 0 counts as 1 (§4.4 training form is binary).
    """

    boxes: Tensor
    positive_map: Tensor
    # Optional per-box weights (G,), None = 1: token_weights scale the token loss of the anchors matched to box g
    # (e.g. a teacher's score), box_weights their box-regression and centerness loss (0: classification only).
    token_weights: Tensor | None = None
    box_weights: Tensor | None = None


@dataclass
class GroundingLossConfig:
    """Constants of `ATSSLossComputation` in the released configs (§8)."""

    topk: int = 9  # ATSS.TOPK x 1 anchor per location (§8.1)
    focal_alpha: float = 0.25  # FUSE_CONFIG.TOKEN_ALPHA (§8.2)
    focal_gamma: float = 2.0  # FUSE_CONFIG.TOKEN_GAMMA (§8.2)
    token_loss_weight: float = 1.0  # DOT_PRODUCT_TOKEN_LOSS_WEIGHT (§8.2)
    reg_loss_weight: float = 2.0  # ATSS.REG_LOSS_WEIGHT (§8.3)
    centerness_loss_weight: float = 1.0  # §8.4


@dataclass
class ImageTargets:
    """Per-anchor training targets of one image (anchors of all levels concatenated, N of them).

    matched_gt: (N,) index of the assigned GT, -1 for negatives.
    token_targets: (N, L) binary alignment targets.
    reg_targets: (P, 4) encoded GT deltas of the P positive anchors, in anchor order.
    centerness_targets: (P,) centerness of the positive anchors.
    """

    matched_gt: Tensor
    token_targets: Tensor
    reg_targets: Tensor
    centerness_targets: Tensor
    anchor_weights: Tensor | None = None  # (N,) token-loss weight per anchor (targets.token_weights), None = 1
    positive_box_weights: Tensor | None = None  # (P,) box-loss weight per positive anchor, None = 1


def build_positive_map(
    token_indices: Sequence[Sequence[int]], length: int = 256, device: torch.device | str | None = None
) -> Tensor:
    """Binary (G, length) float map: row g is 1 at the token positions of box g's phrase (§4.4 training form)."""
    positive_map = torch.zeros(len(token_indices), length, dtype=torch.float32)
    for row, tokens in enumerate(token_indices):
        tokens = list(tokens)
        bad = [t for t in tokens if not 0 <= int(t) < length]
        if bad:
            raise ValueError(f"box {row}: token indices {bad} are outside the {length} token positions")
        if tokens:
            positive_map[row, torch.as_tensor(tokens, dtype=torch.long)] = 1.0
    return positive_map.to(device) if device is not None else positive_map


def _centres(boxes: Tensor) -> Tensor:
    """Box centres (N, 2) as ((x1+x2)/2, (y1+y2)/2)."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def atss_assign(anchors: Sequence[Tensor], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """ATSS: the GT index each anchor (levels concatenated in order) is assigned to, -1 for negatives (§8.1)."""
    all_anchors = torch.cat(list(anchors), dim=0)
    num_anchors, num_gt = all_anchors.shape[0], gt_boxes.shape[0]
    unassigned = torch.full((num_anchors,), -1, dtype=torch.long, device=all_anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return unassigned

    ious = box_iou(all_anchors, gt_boxes)  # (N, G), +1 convention
    anchor_centres = _centres(all_anchors)
    distances = (anchor_centres[:, None, :] - _centres(gt_boxes)[None, :, :]).pow(2).sum(-1).sqrt()

    # Top-k closest anchor centres per level and GT; a level with fewer anchors gives all of them.
    candidates = []
    start = 0
    for level in anchors:
        count = level.shape[0]
        k = min(topk, count)
        if k > 0:
            candidates.append(distances[start : start + count].topk(k, dim=0, largest=False).indices + start)
        start += count
    candidates = torch.cat(candidates, dim=0)  # (C, G)
    candidate_ious = ious.gather(0, candidates)

    # §8.1: threshold = mean + unbiased std over the candidates. With a single candidate torch.std is NaN in the
    # official code and `iou >= NaN` is false for every anchor; +inf gives the same "no positive", without a warning.
    if candidates.shape[0] > 1:
        threshold = candidate_ious.mean(0) + candidate_ious.std(0, correction=1)
    else:
        threshold = torch.full((num_gt,), float("inf"), device=ious.device)
    is_positive = candidate_ious >= threshold[None, :]

    # Centre of the anchor inside the GT by more than 0.01 px on all four sides (plain coordinates, no +1).
    cx = anchor_centres[:, 0][candidates]
    cy = anchor_centres[:, 1][candidates]
    margins = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=0
    )
    is_positive &= margins.min(dim=0).values > 0.01

    # An anchor positive for several GTs takes the one with the highest IoU (first index on exact ties).
    positive_ious = torch.full_like(ious, float("-inf"))
    gt_index = torch.arange(num_gt, device=ious.device).expand_as(candidates)
    rows, cols = candidates[is_positive], gt_index[is_positive]
    positive_ious[rows, cols] = ious[rows, cols]
    best_iou, best_gt = positive_ious.max(dim=1)
    return torch.where(best_iou > float("-inf"), best_gt, unassigned)


def centerness_from_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of the anchor centres' distances to `boxes` (§8.4)."""
    centres = _centres(anchors)
    left = centres[:, 0] - boxes[:, 0]
    top = centres[:, 1] - boxes[:, 1]
    right = boxes[:, 2] - centres[:, 0]
    bottom = boxes[:, 3] - centres[:, 1]
    horizontal = torch.minimum(left, right) / torch.maximum(left, right)
    vertical = torch.minimum(top, bottom) / torch.maximum(top, bottom)
    return torch.sqrt(horizontal * vertical)


def prepare_image_targets(
    anchors: Sequence[Tensor], targets: GroundingTargets, num_tokens: int, box_coder: BoxCoder, topk: int = 9
) -> ImageTargets:
    """ATSS-assign the anchors of one image and build its token, regression and centerness targets (§8.1)."""
    all_anchors = torch.cat(list(anchors), dim=0)
    gt_boxes = targets.boxes.to(device=all_anchors.device, dtype=torch.float32).reshape(-1, 4)
    # §4.4: the training map is normalised per row and then cast to bool and back, i.e. binary.
    positive_map = (targets.positive_map.to(all_anchors.device) > 0).float()
    if tuple(positive_map.shape) != (gt_boxes.shape[0], num_tokens):
        raise ValueError(
            f"positive map has shape {tuple(positive_map.shape)}, expected ({gt_boxes.shape[0]}, {num_tokens}): "
            "one row per GT box over the logits' token positions"
        )

    matched_gt = atss_assign(anchors, gt_boxes, topk)
    positive = matched_gt >= 0

    token_targets = torch.zeros(all_anchors.shape[0], num_tokens, device=all_anchors.device)
    # §8.1: negatives get a 1 at the last token position (the official "[NoObj]" slot, index 255 for L = 256).
    # The token loss keeps only positions whose attention mask is 1, so this target is dropped unless the
    # prompt fills every position, in which case negatives are pushed towards 1 on the last real token.
    token_targets[~positive, num_tokens - 1] = 1.0
    token_targets[positive] = positive_map[matched_gt[positive]]

    positive_anchors = all_anchors[positive]
    reg_targets = box_coder.encode(gt_boxes[matched_gt[positive]], positive_anchors)
    # §8.4: the centerness target is measured on the GT as decoded back from the regression target.
    centerness_targets = centerness_from_boxes(box_coder.decode(reg_targets, positive_anchors), positive_anchors)
    anchor_weights = positive_box_weights = None
    if targets.token_weights is not None:
        anchor_weights = torch.ones(all_anchors.shape[0], device=all_anchors.device)
        anchor_weights[positive] = targets.token_weights.to(all_anchors.device).float()[matched_gt[positive]]
    if targets.box_weights is not None:
        positive_box_weights = targets.box_weights.to(all_anchors.device).float()[matched_gt[positive]]
    return ImageTargets(matched_gt, token_targets, reg_targets, centerness_targets, anchor_weights,
                        positive_box_weights)


def token_sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, text_mask: Tensor, alpha: float = 0.25, gamma: float = 2.0,
    anchor_weights: Tensor | None = None,
) -> Tensor:
    """Summed sigmoid focal loss over the (B, N, L) elements whose token has attention mask 1 (§8.2); each anchor's
    terms times `anchor_weights` (B, N) when given."""
    keep = (text_mask > 0)[:, None, :].expand_as(logits)
    weights = anchor_weights[:, :, None].expand_as(logits)[keep] if anchor_weights is not None else None
    logits = logits[keep]
    targets = targets[keep]
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * (1 - p_t) ** gamma * ce
    return (loss * weights).sum() if weights is not None else loss.sum()


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """Per-box 1 - GIoU (§8.3): areas without +1, prediction x2/y2 raised to x1/y1, eps 1e-7."""
    px1, py1 = pred_boxes[:, 0], pred_boxes[:, 1]
    px2 = torch.maximum(px1, pred_boxes[:, 2])
    py2 = torch.maximum(py1, pred_boxes[:, 3])
    tx1, ty1, tx2, ty2 = target_boxes.unbind(dim=1)
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (tx2 - tx1) * (ty2 - ty1)

    iw = torch.minimum(px2, tx2) - torch.maximum(px1, tx1)
    ih = torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    overlap = (iw > 0) & (ih > 0)
    intersection = torch.where(overlap, iw * ih, torch.zeros_like(iw))

    enclosing_w = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    enclosing_h = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    enclosing = enclosing_w * enclosing_h + 1e-7
    union = pred_area + target_area - intersection + 1e-7
    giou = intersection / union - (enclosing - union) / enclosing
    return 1 - giou


def _flatten_levels(per_level: Sequence[Tensor], channels: int) -> Tensor:
    """(B, C, H, W) per level -> (B, sum H*W, C), row-major within a level, levels in order."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, channels) for x in per_level], dim=1)


def _sum_over_ranks(values: Tensor) -> tuple[Tensor, int]:
    """All-reduce (sum) `values` over the default process group when one is initialised; also the world size."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
        return values, torch.distributed.get_world_size()
    return values, 1


def grounding_loss(
    bbox_reg: Sequence[Tensor],
    centerness: Sequence[Tensor],
    dot_product_logits: Sequence[Tensor],
    anchors: Sequence[Tensor],
    targets: Sequence[GroundingTargets],
    text_mask: Tensor,
    cfg: GroundingLossConfig | None = None,
) -> dict[str, Tensor]:
    """GLIP's training loss (§8) from per-level head outputs.

    bbox_reg: (B, 4, H, W) per level; centerness: (B, 1, H, W) logits per level; dot_product_logits:
    (B, H*W, L) per level; anchors: (H*W, 4) per level, shared by the padded batch; targets: one per image;
    text_mask: (B, L) attention mask of the prompts. Returns loss_reg, loss_centerness,
    loss_dot_product_token (weighted) and their sum `loss`.
    """
    cfg = cfg or GroundingLossConfig()
    device = dot_product_logits[0].device
    # §8: the official __call__ runs under custom_fwd(cast_inputs=float32), i.e. fp32 with autocast off.
    with torch.autocast(device_type=device.type, enabled=False):
        reg_pred = _flatten_levels([x.float() for x in bbox_reg], 4)  # (B, N, 4)
        ctr_pred = _flatten_levels([x.float() for x in centerness], 1).squeeze(2)  # (B, N)
        logits = torch.cat([x.float() for x in dot_product_logits], dim=1)  # (B, N, L)
        anchors = [a.to(device=device, dtype=torch.float32) for a in anchors]
        all_anchors = torch.cat(anchors, dim=0)
        batch, num_anchors, num_tokens = logits.shape
        if {reg_pred.shape[1], ctr_pred.shape[1], all_anchors.shape[0]} != {num_anchors}:
            raise ValueError(
                f"anchor counts differ: bbox_reg {reg_pred.shape[1]}, centerness {ctr_pred.shape[1]}, "
                f"logits {num_anchors}, anchors {all_anchors.shape[0]}"
            )
        if len(targets) != batch or tuple(text_mask.shape) != (batch, num_tokens):
            raise ValueError(
                f"expected {batch} targets and a ({batch}, {num_tokens}) text mask, got {len(targets)} targets "
                f"and a mask of shape {tuple(text_mask.shape)}"
            )

        box_coder = BoxCoder()
        per_image = [prepare_image_targets(anchors, t, num_tokens, box_coder, cfg.topk) for t in targets]
        positive = torch.stack([t.matched_gt >= 0 for t in per_image])  # (B, N)
        token_targets = torch.stack([t.token_targets for t in per_image])
        reg_targets = torch.cat([t.reg_targets for t in per_image])  # (P, 4), image-major like `positive`
        ctr_targets = torch.cat([t.centerness_targets for t in per_image])  # (P,)
        num_positive = reg_targets.shape[0]
        anchor_weights = None
        if any(t.anchor_weights is not None for t in per_image):
            anchor_weights = torch.stack([t.anchor_weights if t.anchor_weights is not None
                                          else torch.ones_like(t.matched_gt, dtype=torch.float32) for t in per_image])
        box_weights = None
        if any(t.positive_box_weights is not None for t in per_image):
            box_weights = torch.cat([t.positive_box_weights if t.positive_box_weights is not None
                                     else torch.ones_like(t.centerness_targets) for t in per_image])

        # num_pos_avg_per_gpu = max(total positives / world size, 1); the centerness-target sum is averaged the
        # same way. One all-reduce carries both; every rank takes part even with no positives (§8.2, §8.3).
        totals, world_size = _sum_over_ranks(
            torch.stack([torch.tensor(float(num_positive), device=device), ctr_targets.sum().detach()])
        )
        num_pos_avg = max(totals[0].item() / world_size, 1.0)
        ctr_sum_avg = totals[1].item() / world_size

        token_loss = token_sigmoid_focal_loss(
            logits, token_targets, text_mask.to(device), cfg.focal_alpha, cfg.focal_gamma, anchor_weights
        ) / num_pos_avg

        positive_reg = reg_pred[positive]  # (P, 4)
        positive_ctr = ctr_pred[positive]  # (P,)
        if num_positive > 0:
            positive_anchors = all_anchors[None].expand(batch, -1, -1)[positive]
            pred_boxes = box_coder.decode(positive_reg, positive_anchors)
            target_boxes = box_coder.decode(reg_targets, positive_anchors)
            reg_terms = giou_loss(pred_boxes, target_boxes) * ctr_targets
            ctr_terms = F.binary_cross_entropy_with_logits(positive_ctr, ctr_targets, reduction="none")
            if box_weights is not None:
                reg_terms, ctr_terms = reg_terms * box_weights, ctr_terms * box_weights
            reg_loss = reg_terms.sum() / ctr_sum_avg
            ctr_loss = ctr_terms.sum() / num_pos_avg
        else:
            # §8.5: sums over an empty selection, zero but attached to the graph.
            reg_loss = positive_reg.sum()
            ctr_loss = positive_ctr.sum() * 0

        losses = {
            "loss_reg": reg_loss * cfg.reg_loss_weight,
            "loss_centerness": ctr_loss * cfg.centerness_loss_weight,
            "loss_dot_product_token": token_loss * cfg.token_loss_weight,
        }
        losses["loss"] = losses["loss_reg"] + losses["loss_centerness"] + losses["loss_dot_product_token"]
    return losses


class GroundingLoss(nn.Module):
    """GLIP's unified grounding loss (§8) as a module taking the head outputs."""

    def __init__(self, cfg: GroundingLossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or GroundingLossConfig()

    def forward(
        self, head_outputs: Any, anchors: Sequence[Tensor], targets: Sequence[GroundingTargets], text_mask: Tensor
    ) -> dict[str, Tensor]:
        """`head_outputs` is anything with per-level `bbox_reg`, `centerness` and `dot_product_logits` lists."""
        return grounding_loss(
            head_outputs.bbox_reg,
            head_outputs.centerness,
            head_outputs.dot_product_logits,
            anchors,
            targets,
            text_mask,
            self.cfg,
        )
