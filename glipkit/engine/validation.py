"""Periodic validation of a model being trained: box AP on a COCO-style set with GLIP's class prompt (§4.3, §7)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from glipkit.evaluation.coco import CocoEvalResult, detections_to_coco, evaluate_coco, load_coco_ground_truth


@torch.no_grad()
def evaluate_coco_set(model, annotations: str | os.PathLike, image_dir: str | os.PathLike,
                      max_images: int | None = None, precision: str = "fp32") -> CocoEvalResult:
    """COCO box AP of `model` (its current weights, eval mode for the duration) on a COCO json + image dir.

    Every image is prompted with all categories (cleaned, ". "-joined, in id order), one image at a time as the
    official protocol does; boxes go back to original pixels and are exported with the +1 width (§7.4).
    """
    from PIL import Image

    gt = load_coco_ground_truth(annotations)
    categories = sorted(gt.dataset["categories"], key=lambda c: int(c["id"]))
    names = [str(c["name"]) for c in categories]
    label_to_id = {i: int(c["id"]) for i, c in enumerate(categories)}
    images = sorted(gt.dataset["images"], key=lambda im: im["id"])
    if max_images is not None:
        images = images[:max_images]
    was_training = model.training
    model.eval()
    records = []
    try:
        for image in images:
            path = Path(image_dir) / image["file_name"]
            with Image.open(path) as pil:
                pil = pil.convert("RGB")
            prediction = model.predict(pil, classes=names, precision=precision)[0]
            records += detections_to_coco(image["id"], prediction.boxes, prediction.scores, prediction.labels,
                                          label_to_id)
    finally:
        model.train(was_training)
    return evaluate_coco(gt, records, image_ids=[im["id"] for im in images])
