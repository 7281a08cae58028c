"""GLIP's training augmentations: multi-scale resize and horizontal flip, boxes moved along (GLIP_SPEC.md §1.2)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

from glipkit.data.grounding_example import GroundingExample
from glipkit.model.config import InputConfig
from glipkit.model.prompts import Span
from glipkit.model.transforms import normalize_image, resized_size


@dataclass
class TransformedExample:
    """An example ready for batching: normalised image (3, h, w) and boxes in that (resized, unpadded) frame."""

    key: str
    image: Tensor
    prompt: str
    boxes: np.ndarray
    box_spans: list[list[Span]]
    source: str
    box_events: dict[str, int]
    token_weights: np.ndarray | None = None
    box_weights: np.ndarray | None = None


class TrainTransform:
    """Resize with a short side drawn from `min_sizes` (long side <= `max_size`), flip with `flip_prob`, normalise.

    The defaults of GLIP training are min_sizes (480, 560, 640, 720, 800), max_size 1333, flip 0.5 (§1.1-§1.2);
    take them from a model's `InputConfig.train_min_sizes` / `max_size`. The prompt is never changed by a flip.
    """

    def __init__(
        self,
        input_cfg: InputConfig,
        min_sizes: Sequence[int] | None = None,
        max_size: int | None = None,
        flip_prob: float = 0.5,
    ) -> None:
        self.input_cfg = input_cfg
        self.min_sizes = tuple(min_sizes or input_cfg.train_min_sizes)
        self.max_size = int(max_size or input_cfg.max_size)
        self.flip_prob = flip_prob
        if not self.min_sizes:
            raise ValueError("training needs at least one short-side size")

    def __call__(self, example: GroundingExample, rng: random.Random) -> TransformedExample:
        image = example.image
        min_size = rng.choice(self.min_sizes)
        width, height = resized_size(image.width, image.height, min_size, self.max_size)
        boxes = resize_boxes(example.boxes, (image.width, image.height), (width, height))
        if (width, height) != image.size:
            image = image.resize((width, height), Image.BILINEAR)
        if rng.random() < self.flip_prob:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = flip_boxes(boxes, width)
        return TransformedExample(
            key=example.key,
            image=normalize_image(image, self.input_cfg),
            prompt=example.prompt,
            boxes=boxes,
            box_spans=example.box_spans,
            source=example.source,
            box_events=dict(example.box_events),
            token_weights=example.token_weights,
            box_weights=example.box_weights,
        )


def resize_boxes(boxes: np.ndarray, old_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Scale xyxy boxes from an image of old (w, h) to new (w, h), x and y separately (BoxList.resize)."""
    ratio_w = new_size[0] / old_size[0]
    ratio_h = new_size[1] / old_size[1]
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array(
        [ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)).astype(np.float32)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror xyxy boxes in an image `width` pixels wide; x' = w - x - 1 with GLIP's +1 convention (§1.1.3, §6.4)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped
