"""Anchors, the box coder and box ops in the official +1 pixel convention (GLIP_SPEC.md §6.1, §6.4, §7).

Every function here uses maskrcnn-benchmark's legacy convention where a box [x1, y1, x2, y2] is
x2 - x1 + 1 pixels wide. Code outside `glipkit.model` never needs to know about it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# §6.4: dw/dh are clamped at log(1000/16) before exp.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def cell_anchor(stride: int, size: int) -> Tensor:
    """The single anchor of one feature-map cell at `stride`, side `size`, centred at ((s-1)/2, (s-1)/2) (§6.1)."""
    center = (stride - 1) / 2.0
    half = (size - 1) / 2.0
    return torch.tensor([center - half, center - half, center + half, center + half], dtype=torch.float32)


def grid_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[int],
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """Anchors (H*W, 4) per level over the padded feature maps, row-major (y outer, x inner) (§6.1)."""
    anchors = []
    for (height, width), stride, size in zip(feature_sizes, strides, sizes):
        base = cell_anchor(stride, size).to(device)
        shift_y = torch.arange(height, device=device, dtype=torch.float32) * stride
        shift_x = torch.arange(width, device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=1)
        anchors.append(shifts + base)
    return anchors


class BoxCoder:
    """Encodes/decodes box deltas relative to anchors with weights (10, 10, 5, 5) and the +1 convention (§6.4)."""

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        self.weights = weights

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas (N, 4) that turn `anchors` (N, 4) into `boxes` (N, 4)."""
        wx, wy, ww, wh = self.weights
        aw = anchors[:, 2] - anchors[:, 0] + 1
        ah = anchors[:, 3] - anchors[:, 1] + 1
        ax = (anchors[:, 0] + anchors[:, 2]) / 2
        ay = (anchors[:, 1] + anchors[:, 3]) / 2
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        bx = (boxes[:, 0] + boxes[:, 2]) / 2
        by = (boxes[:, 1] + boxes[:, 3]) / 2
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes (N, 4) from deltas (N, 4) and anchors (N, 4)."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        aw = anchors[:, 2] - anchors[:, 0] + 1
        ah = anchors[:, 3] - anchors[:, 1] + 1
        ax = (anchors[:, 0] + anchors[:, 2]) / 2
        ay = (anchors[:, 1] + anchors[:, 3]) / 2
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        dw = torch.clamp(deltas[:, 2] / ww, max=BBOX_XFORM_CLIP)
        dh = torch.clamp(deltas[:, 3] / wh, max=BBOX_XFORM_CLIP)
        cx = dx * aw + ax
        cy = dy * ah + ay
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        return torch.stack([cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2], dim=1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas with the +1 convention."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU (N, M) with the +1 convention (`boxlist_iou`, ml_nms.cu)."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip to [0, w-1] x [0, h-1] of the unpadded image (§7.2 step 6)."""
    x = boxes[:, 0::2].clamp(min=0, max=width - 1)
    y = boxes[:, 1::2].clamp(min=0, max=height - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS with the +1 IoU; suppresses when IoU > threshold (§7.3, the CUDA ml_nms semantics).

    Returns the kept indices in ascending order, as the official kernel does.
    """
    import torchvision

    keep = []
    for label in labels.unique():
        index = torch.nonzero(labels == label).squeeze(1)
        sub = boxes[index].float()
        # IoU with the +1 convention equals plain IoU of the boxes widened by one pixel.
        widened = torch.cat([sub[:, :2], sub[:, 2:] + 1], dim=1)
        keep.append(index[torchvision.ops.nms(widened, scores[index].float(), iou_threshold)])
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.cat(keep).sort().values


def rescale_boxes(boxes: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Boxes from the resized frame to the original image, x and y scaled separately, no +1 shift (§7.4)."""
    ratio_h = original_size[0] / input_size[0]
    ratio_w = original_size[1] / input_size[1]
    return boxes * boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
