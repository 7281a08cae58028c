"""ATSS inference post-processing of GLIP's head outputs into per-image detections (GLIP_SPEC.md §7.1-§7.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from glipkit.model.boxes import BoxCoder, batched_nms, clip_boxes
from glipkit.model.config import PostprocessConfig


@dataclass
class Detections:
    """Boxes (N, 4) xyxy in the network-input (resized, unpadded) pixel frame, scores (N,), 0-based phrase labels (N,).

    `candidates` optionally holds the boxes that entered NMS (after threshold, per-level top-k, decode and clip).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    candidates: Optional["Detections"] = None

    def __len__(self) -> int:
        return self.scores.shape[0]


def _phrase_token_table(positive_maps: Sequence[Tensor], num_tokens: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token indices (B, P, T) of every phrase and their validity (B, P, T); P, T are padded to the batch maximum."""
    num_phrases = max((pm.shape[0] for pm in positive_maps), default=0)
    marks = torch.zeros(len(positive_maps), num_phrases, num_tokens, dtype=torch.bool, device=device)
    for image, pm in enumerate(positive_maps):
        if pm.dim() != 2 or pm.shape[1] != num_tokens:
            raise ValueError(f"positive map of image {image} has shape {tuple(pm.shape)}, expected (phrases, {num_tokens})")
        marks[image, : pm.shape[0]] = pm.to(device) > 0
    max_tokens = int(marks.sum(-1).max()) if marks.numel() else 0
    # A stable sort puts each phrase's token positions first, in increasing order.
    order = torch.argsort((~marks).to(torch.uint8), dim=-1, stable=True)[..., :max_tokens]
    order = order.contiguous()
    return order, torch.gather(marks, -1, order)


def postprocess_detections(
    bbox_reg: Sequence[Tensor],
    centerness: Sequence[Tensor],
    dot_product_logits: Sequence[Tensor],
    anchors: Sequence[Tensor],
    positive_maps: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    cfg: PostprocessConfig,
    return_candidates: bool = False,
) -> list[Detections]:
    """Per-image detections from the head outputs of all levels (§7.2, §7.3).

    bbox_reg[l] (B, 4, H, W) deltas, centerness[l] (B, 1, H, W) logits, dot_product_logits[l] (B, H*W, L), anchors[l]
    (H*W, 4) over the padded map; positive_maps[i] (P_i, L) 0/1 marks the tokens of image i's phrases; image_sizes[i]
    is its unpadded (h, w). Detections are sorted by decreasing score; candidates are in level order (P3 first),
    each level by decreasing score. A phrase whose row has no token never yields a detection.
    """
    num_images = bbox_reg[0].shape[0]
    if not (len(positive_maps) == len(image_sizes) == num_images):
        raise ValueError(f"{num_images} images but {len(positive_maps)} positive maps and {len(image_sizes)} sizes")
    device = bbox_reg[0].device
    num_tokens = dot_product_logits[0].shape[-1]
    token_index, token_valid = _phrase_token_table(positive_maps, num_tokens, device)
    num_phrases, max_tokens = token_index.shape[1], token_index.shape[2]
    token_count = token_valid.sum(-1)  # (B, P)
    phrase_valid = token_count > 0
    coder = BoxCoder()

    level_boxes, level_scores, level_labels, level_selected = [], [], [], []
    for deltas, ctr_logits, logits, level_anchors in zip(bbox_reg, centerness, dot_product_logits, anchors):
        num_locations = logits.shape[1]
        if num_phrases == 0 or num_locations == 0:
            continue
        # §7.2 steps 1-2: class score = mean of the token probabilities (not the sigmoid of the mean logit).
        probs = logits.float().sigmoid()
        gathered = torch.gather(
            probs, 2, token_index.view(num_images, 1, -1).expand(-1, num_locations, -1)
        ).view(num_images, num_locations, num_phrases, max_tokens)
        scores = (gathered * token_valid[:, None]).sum(-1) / token_count.clamp(min=1)[:, None]  # (B, N, P)
        # §7.2 step 3: the threshold applies before centerness.
        candidate = (scores > cfg.score_threshold) & phrase_valid[:, None]
        ctr = ctr_logits.float().reshape(num_images, num_locations).sigmoid()
        # §7.2 step 4: top-k of score * centerness among the candidates; non-candidates rank below every candidate.
        ranked = torch.where(candidate, scores * ctr[:, :, None], torch.full_like(scores, -1.0))
        k = min(cfg.pre_nms_top_n, num_locations * num_phrases)
        top_values, top_index = ranked.view(num_images, -1).topk(k, dim=1)
        location = torch.div(top_index, num_phrases, rounding_mode="floor")
        flat_deltas = deltas.float().permute(0, 2, 3, 1).reshape(num_images, num_locations, 4)
        chosen_deltas = torch.gather(flat_deltas, 1, location[..., None].expand(-1, -1, 4))
        chosen_anchors = level_anchors.to(device=device, dtype=torch.float32)[location]
        boxes = coder.decode(chosen_deltas.reshape(-1, 4), chosen_anchors.reshape(-1, 4)).view(num_images, k, 4)
        level_boxes.append(boxes)
        # §7.2 step 5: the final score is sqrt(score * centerness).
        level_scores.append(top_values.clamp(min=0).sqrt())
        level_labels.append(top_index % num_phrases)
        level_selected.append(torch.gather(candidate.view(num_images, -1), 1, top_index))

    results = []
    for image in range(num_images):
        if not level_boxes:
            empty = Detections(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                               torch.zeros(0, dtype=torch.long, device=device))
            results.append(Detections(empty.boxes, empty.scores, empty.labels, empty if return_candidates else None))
            continue
        selected = torch.cat([s[image] for s in level_selected])
        height, width = (int(v) for v in image_sizes[image])
        # §7.2 step 6: clip to the unpadded image with the +1 convention; empty boxes stay (min size 0 is a no-op).
        boxes = clip_boxes(torch.cat([b[image] for b in level_boxes])[selected], height, width)
        scores = torch.cat([s[image] for s in level_scores])[selected]
        labels = torch.cat([lab[image] for lab in level_labels])[selected]
        keep = batched_nms(boxes, scores, labels, cfg.nms_threshold)  # §7.3: class-wise, +1 IoU
        kept_scores = scores[keep]
        limit = cfg.detections_per_image
        if limit > 0 and keep.numel() > limit:
            # §7.3: keep scores >= the limit-th largest (`kthvalue`), so ties at the cut may keep a few more.
            cut = torch.kthvalue(kept_scores, keep.numel() - limit + 1).values
            keep = keep[kept_scores >= cut]
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        candidates = Detections(boxes, scores, labels) if return_candidates else None
        results.append(Detections(boxes[keep], scores[keep], labels[keep], candidates))
    return results
