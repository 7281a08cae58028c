"""Gold detection data: a COCO-format json and its image directory, prompted as GLIP trains on detection (§4.5)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from glipkit.data.detection_prompt import DetectionPromptBuilder, DetectionPromptConfig, prompted_example
from glipkit.data.grounding_example import GroundingExample, xywh_to_xyxy
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from glipkit.data.source import ImageRecordSource
from glipkit.files import read_json


@dataclass
class CocoImage:
    """One image of the json with its usable (non-crowd) annotations: xyxy (+1 convention) and category ids."""

    image_id: Any
    file_name: str
    boxes: np.ndarray
    category_ids: list[int]


def read_coco_detection(path: str | os.PathLike) -> tuple[dict[int, str], list[CocoImage]]:
    """Categories {id: name} and the images of a COCO detection json, in file order; crowd boxes are left out
    (GLIP's COCO training drops iscrowd annotations)."""
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{path}: not a COCO detection file (needs 'images' and 'categories')")
    categories = {}
    for i, cat in enumerate(data["categories"]):
        if "id" not in cat or "name" not in cat:
            raise ValueError(f"{path}: category #{i} needs 'id' and 'name'")
        categories[int(cat["id"])] = str(cat["name"])
    per_image: dict[Any, list[dict]] = {}
    for i, ann in enumerate(data.get("annotations", [])):
        missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
        if missing:
            raise ValueError(f"{path}: annotation #{i} lacks {', '.join(missing)}")
        if int(ann["category_id"]) not in categories:
            raise ValueError(f"{path}: annotation #{i} has category_id {ann['category_id']} not in 'categories'")
        if len(ann["bbox"]) != 4:
            raise ValueError(f"{path}: annotation #{i} has a bbox of {len(ann['bbox'])} numbers, expected 4")
        per_image.setdefault(ann["image_id"], []).append(ann)
    images = []
    for i, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise ValueError(f"{path}: image #{i} needs 'id' and 'file_name'")
        anns = [a for a in per_image.get(image["id"], []) if not a.get("iscrowd", 0)]
        boxes = np.array([xywh_to_xyxy(a["bbox"]) for a in anns], dtype=np.float32).reshape(-1, 4)
        images.append(CocoImage(image["id"], str(image["file_name"]), boxes, [int(a["category_id"]) for a in anns]))
    return categories, images


class CocoDetectionSource(ImageRecordSource):
    """Detection gold: every image gets GLIP's training prompt (its classes + sampled negatives, §4.5).

    `image_ids` restricts the set (few-shot); images without boxes are left out unless `keep_empty` (GLIP's
    training sets remove them). `box_policy` "clip" or "skip" handles boxes that leave their image.
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        image_dir: str | os.PathLike,
        tokenizer,
        *,
        name: str = "gold",
        prompt_cfg: DetectionPromptConfig | None = None,
        box_policy: str = "clip",
        image_ids: Sequence[Any] | None = None,
        keep_empty: bool = False,
        shuffle: bool = True,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__(name, image_dir, box_policy=box_policy, shuffle=shuffle, max_image_pixels=max_image_pixels)
        self.annotations = Path(annotations)
        self.categories, images = read_coco_detection(annotations)
        if image_ids is not None:
            wanted = set(image_ids)
            images = [im for im in images if im.image_id in wanted]
        self.without_boxes = sum(1 for im in images if len(im.boxes) == 0)
        self.images = images if keep_empty else [im for im in images if len(im.boxes)]
        if not self.images:
            raise ValueError(f"{annotations}: no image with annotations to train on")
        self.prompts = DetectionPromptBuilder(self.categories, tokenizer, prompt_cfg)

    def example(self, record: CocoImage, key: str, image: Image.Image, boxes: np.ndarray, kept: np.ndarray,
                events: dict[str, int], rng: random.Random) -> GroundingExample:
        return prompted_example(key, image, boxes, [record.category_ids[i] for i in kept], self.prompts, rng,
                                self.name, events)
