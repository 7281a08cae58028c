"""Labels against a gold subset: precision, recall and F1 at each score threshold, per category, and COCO AP.

Matching is greedy per image and category, highest score first, each gold box matched at most once at IoU >=
`iou` (boxes as exclusive xyxy, as pycocotools sees them). Greedy matching in score order makes the matches of the
boxes above a threshold the same as in the full list, so one matching per image serves every threshold.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from glipkit.evaluation.coco import evaluate_coco, read_coco_json
from glipkit.evaluation.flickr import box_iou_xyxy
from glipkit.evaluation.label_stats import THRESHOLDS


@dataclass
class GoldImage:
    image_id: Any
    boxes: np.ndarray  # (G, 4) exclusive xyxy
    categories: list[int]  # gold category ids


def read_gold(path: str | Path) -> tuple[dict, dict[int, str], dict[str, GoldImage]]:
    """The gold json, its categories {id: name}, and its images by key (file name without extension, and id)."""
    data = read_coco_json(path, "gold COCO file")
    categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    per_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in data.get("annotations", []):
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    images: dict[str, GoldImage] = {}
    for image in data["images"]:
        anns = per_image.get(image["id"], [])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float64).reshape(-1, 4)
        gold = GoldImage(image["id"], boxes, [int(a["category_id"]) for a in anns])
        images.setdefault(str(image["id"]), gold)
        images[Path(str(image.get("file_name", image["id"]))).stem] = gold
    return data, categories, images


def greedy_matches(boxes: np.ndarray, scores: np.ndarray, gold: np.ndarray, iou: float) -> np.ndarray:
    """For boxes of one category in one image: whether each matches a gold box (greedy, best score first)."""
    matched = np.zeros(len(scores), bool)
    free = np.ones(len(gold), bool)
    overlaps = box_iou_xyxy(boxes, gold)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if not free.any():
            break
        candidates = np.where(free, overlaps[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            matched[i], free[j] = True, False
    return matched


@dataclass
class QualityCounter:
    """Scores of matched / unmatched labels and gold counts per category, over images."""

    iou: float = 0.5
    scores: dict[int, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    hits: dict[int, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    gold: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    images: int = 0

    def add(self, boxes: np.ndarray, scores: np.ndarray, categories: np.ndarray, gold: GoldImage) -> None:
        """One image: its labels (exclusive xyxy, score, gold category id) and its gold."""
        self.images += 1
        gold_categories = np.asarray(gold.categories, np.int64)
        for category in set(categories.tolist()) | set(gold.categories):
            mine, theirs = categories == category, gold_categories == category
            self.gold[category] += int(theirs.sum())
            if mine.any():
                self.scores[category].append(scores[mine])
                self.hits[category].append(greedy_matches(boxes[mine], scores[mine], gold.boxes[theirs], self.iou))

    def curve(self, categories: Iterable[int] | None = None) -> list[dict[str, float]]:
        """Precision, recall, F1 (and counts) at each threshold, over `categories` (default: all)."""
        chosen = list(self.gold) if categories is None else list(categories)
        scores = np.concatenate([s for c in chosen for s in self.scores.get(c, [])] or [np.zeros(0)])
        hits = np.concatenate([h for c in chosen for h in self.hits.get(c, [])] or [np.zeros(0, bool)])
        total = sum(self.gold.get(c, 0) for c in chosen)
        rows = []
        for t in THRESHOLDS:
            above = scores >= t
            tp, fp = int(hits[above].sum()), int((~hits[above]).sum())
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / total if total else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"threshold": t, "tp": tp, "fp": fp, "fn": total - tp, "precision": round(precision, 4),
                         "recall": round(recall, 4), "f1": round(f1, 4)})
        return rows


def best_threshold(curve: list[dict[str, float]]) -> dict[str, float]:
    """The row with the highest F1 (the lowest threshold among ties)."""
    return max(curve, key=lambda r: (r["f1"], -r["threshold"]))


def coco_ap(gold: dict, image_ids: list, records: list[dict]) -> dict[str, Any]:
    """COCO AP (pycocotools) of the labels on the gold images they cover: overall and per category."""
    result = evaluate_coco(gold, records, image_ids=image_ids)
    return {"AP": result.metrics["AP"], "AP50": result.metrics["AP50"],
            "per_category_AP": {result.category_names.get(c, str(c)): ap for c, ap in result.per_category_ap.items()}}
