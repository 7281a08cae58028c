"""Periodic validation of a model being trained: box AP on a COCO-style set, exactly as `glipkit eval coco` runs it."""

from __future__ import annotations

import os

from glipkit.engine.evaluation.jobs import run_coco
from glipkit.engine.evaluation.loop import RunSettings


def evaluate_coco_set(model, annotations: str | os.PathLike, image_dir: str | os.PathLike,
                      max_images: int | None = None, precision: str = "fp32") -> dict[str, float]:
    """The 12 COCO numbers of `model` (its current weights, in eval mode for the duration) on a COCO json + image
    dir: GLIP's class prompt (§4.3), batch 1 (the official protocol), +1 xywh export (§7.4)."""
    was_training = model.training
    model.eval()
    try:
        run = run_coco(model, annotations, image_dir, RunSettings(precision=precision, max_images=max_images))
    finally:
        model.train(was_training)
    return dict(run.metrics)
