"""Few-shot subsets of a detection set: about K images per class, chosen by seed (`--shots K --seed S`)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Sequence

from glipkit.data.coco_detection import CocoImage


def few_shot_image_ids(images: Sequence[CocoImage], shots: int, seed: int) -> list[Any]:
    """Image ids of a K-shot subset: images are visited in a seeded random order and one is taken while any of its
    classes still has fewer than K images taken. Every class ends with at least min(K, its image count) images;
    classes that share images with rarer ones may get more. Same images, seeds and K give the same subset."""
    if shots < 1:
        raise ValueError("--shots must be at least 1")
    order = list(range(len(images)))
    random.Random(f"few-shot:{seed}").shuffle(order)
    needed: Counter = Counter()
    for image in images:
        for category in set(image.category_ids):
            needed[category] = shots
    chosen = []
    for index in order:
        categories = set(images[index].category_ids)
        if any(needed[c] > 0 for c in categories):
            chosen.append(images[index].image_id)
            for category in categories:
                needed[category] -= 1
    return chosen
