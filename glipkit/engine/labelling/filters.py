"""Which teacher boxes become pseudo-labels: score, per-image and count filters, with presets named after papers.

Box-level filters remove boxes; image-level filters (--image-threshold, --min-boxes) never drop an image: it
is written with an empty box list and a flag, so downstream can tell it apart and re-filter.

Presets:
  glip      boxes with score >= 0.5 (the GLIP paper's pseudo-labelling threshold).
  owl-st    boxes >= 0.1, images kept only with at least one box >= 0.3 (OWL-ST, Minderer et al. 2023).
  mm-gdino  boxes >= 0.3 (the default --pred-score-thr of mmdetection's demo, MM-Grounding-DINO's toolbox).
  none      every box the model's post-processing returns (score > 0.05 before centerness, §7.2).
All presets keep GLIP's own per-phrase NMS at IoU 0.6 and at most 100 boxes per image (§7.1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from glipkit.data.tables import top_boxes
from glipkit.model.config import PostprocessConfig

# Row flags (the `flags` column).
BELOW_IMAGE_THRESHOLD = "below_image_threshold"
TOO_FEW_BOXES = "too_few_boxes"
PHRASES_BEYOND_TOKEN_LIMIT = "phrases_beyond_token_limit"
NO_PHRASES = "no_phrases"


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds applied to each image's detections, in this order: NMS and max boxes (model), box threshold,
    max boxes, image threshold, min boxes."""

    box_threshold: float = 0.5
    image_threshold: float | None = None  # keep an image's boxes only if one reaches this score
    nms: float = 0.6  # IoU of GLIP's per-phrase (class-wise) NMS, +1 convention (§7.3)
    max_boxes: int = 100  # per image, highest scores first; 0: no limit
    min_boxes: int = 0  # images with fewer boxes get an empty list and a flag


PRESETS: dict[str, FilterSettings] = {
    "glip": FilterSettings(box_threshold=0.5),
    "owl-st": FilterSettings(box_threshold=0.1, image_threshold=0.3),
    "mm-gdino": FilterSettings(box_threshold=0.3),
    "none": FilterSettings(box_threshold=0.0),
}


def filter_settings(preset: str = "glip", **overrides) -> FilterSettings:
    """A preset with the given knobs replaced (None values leave the preset's value)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown filter preset '{preset}'; choose one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    settings = replace(PRESETS[preset], **changes)
    if not 0.0 <= settings.box_threshold <= 1.0:
        raise ValueError(f"--box-threshold must be in [0, 1], not {settings.box_threshold}")
    if settings.image_threshold is not None and not 0.0 <= settings.image_threshold <= 1.0:
        raise ValueError(f"--image-threshold must be in [0, 1], not {settings.image_threshold}")
    if not 0.0 < settings.nms <= 1.0:
        raise ValueError(f"--nms must be an IoU in (0, 1], not {settings.nms}")
    if settings.max_boxes < 0 or settings.min_boxes < 0:
        raise ValueError("--max-boxes and --min-boxes must be >= 0")
    return settings


def postprocess_for(filters: FilterSettings, base: PostprocessConfig) -> PostprocessConfig:
    """The model's post-processing for these filters: NMS IoU and box limit, and a candidate threshold raised
    to what the box threshold implies.

    The final score is sqrt(p * centerness) <= sqrt(p) (§7.2), so a candidate with p < box_threshold**2 can
    never reach the box threshold. Such candidates rank below every box that can, so dropping them early
    changes neither the per-level top-k, the NMS, nor the kept boxes; it only saves work.
    """
    candidate = max(base.score_threshold, filters.box_threshold**2 * 0.999)
    return replace(base, score_threshold=candidate, nms_threshold=filters.nms,
                   detections_per_image=filters.max_boxes)


def apply_filters(scores: Tensor, filters: FilterSettings) -> tuple[Tensor, list[str]]:
    """Indices of the boxes to keep (highest score first) and the image's flags, from its detection scores."""
    order = torch.from_numpy(top_boxes(scores.cpu().numpy(), filters.box_threshold, filters.max_boxes))
    flags: list[str] = []
    if filters.image_threshold is not None and not bool((scores[order] >= filters.image_threshold).any()):
        flags.append(BELOW_IMAGE_THRESHOLD)
        order = order[:0]
    if filters.min_boxes > 0 and order.numel() < filters.min_boxes:
        flags.append(TOO_FEW_BOXES)
        order = order[:0]
    return order, flags
