"""Gold grounding data in MDETR's COCO-style json: each image has a `caption`, each box `tokens_positive` spans."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from glipkit.data.grounding_example import GroundingExample, xywh_to_xyxy
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from glipkit.data.source import ImageRecordSource
from glipkit.files import read_json
from glipkit.model.prompts import Span


@dataclass
class CaptionedImage:
    """One image, its caption, and its boxes (xyxy, +1 convention) with the caption spans each grounds."""

    image_id: Any
    file_name: str
    caption: str
    boxes: np.ndarray
    box_spans: list[list[Span]]


def _spans(value: Any, caption: str, where: str) -> list[Span]:
    spans = []
    for span in value or []:
        if len(span) != 2:
            raise ValueError(f"{where}: tokens_positive entry {span!r} is not [start, end]")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"{where}: span [{start}, {end}] is outside its caption of {len(caption)} characters")
        spans.append((start, end))
    return spans


def read_mdetr_grounding(path: str | os.PathLike) -> tuple[list[CaptionedImage], int]:
    """The captioned images of an MDETR-style json and how many boxes had no `tokens_positive` (left out)."""
    data = read_json(path, "grounding annotation file")
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: not a COCO-style grounding file (needs 'images')")
    per_image: dict[Any, list[dict]] = {}
    for i, ann in enumerate(data.get("annotations", [])):
        missing = [k for k in ("image_id", "bbox") if k not in ann]
        if missing:
            raise ValueError(f"{path}: annotation #{i} lacks {', '.join(missing)}")
        per_image.setdefault(ann["image_id"], []).append(ann)
    images, without_spans = [], 0
    for i, image in enumerate(data["images"]):
        if "caption" not in image or "file_name" not in image or "id" not in image:
            raise ValueError(f"{path}: image #{i} needs 'id', 'file_name' and 'caption'")
        caption = str(image["caption"])
        boxes, spans = [], []
        for ann in per_image.get(image["id"], []):
            if ann.get("iscrowd", 0):
                continue
            box_spans = _spans(ann.get("tokens_positive"), caption, f"{path}: image {image['id']}")
            if not box_spans:
                without_spans += 1
                continue
            boxes.append(xywh_to_xyxy(ann["bbox"]))
            spans.append(box_spans)
        images.append(CaptionedImage(image["id"], str(image["file_name"]), caption,
                                     np.array(boxes, np.float32).reshape(-1, 4), spans))
    return images, without_spans


class MdetrGroundingSource(ImageRecordSource):
    """Grounding gold (GoldG, Flickr30K entities, RefCOCO in MDETR's format): the caption is the prompt (§4.5)."""

    def __init__(
        self,
        annotations: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        name: str = "grounding",
        box_policy: str = "clip",
        keep_empty: bool = False,
        shuffle: bool = True,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(name, image_dir, box_policy=box_policy, shuffle=shuffle, max_image_pixels=max_image_pixels)
        images, self.boxes_without_spans = read_mdetr_grounding(annotations)
        self.images = images if keep_empty else [im for im in images if len(im.boxes)]
        if not self.images:
            raise ValueError(f"{annotations}: no captioned image with grounded boxes")

    def example(self, record: CaptionedImage, key: str, image: Image.Image, boxes: np.ndarray, kept: np.ndarray,
                events: dict[str, int], rng: random.Random) -> GroundingExample:
        return GroundingExample(key, image, record.caption, boxes, [record.box_spans[i] for i in kept],
                                self.name, events)
