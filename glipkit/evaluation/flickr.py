"""Flickr30K Entities phrase grounding: the MDETR annotation loader and Recall@k (GLIP_SPEC.md §7.6).

Protocol (MDETR "any-box", used by GLIP): for every annotated phrase of a caption, the predicted boxes of
that phrase are ranked by score; the phrase is a hit at k when any of the top-k boxes overlaps any of the
phrase's ground-truth boxes with IoU >= 0.5. Recall@k = hits / phrases. IoU is computed on continuous
xyxy coordinates (area = (x2 - x1) * (y2 - y1)), as MDETR's evaluator does. A phrase with no predicted
box is a miss.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glipkit.files import read_json

Span = tuple[int, int]
DEFAULT_TOPK: tuple[int, ...] = (1, 5, 10)


@dataclass(frozen=True)
class FlickrPhrase:
    """One annotated phrase: its text, its character spans in the caption, and its boxes (xyxy pixels)."""

    text: str
    spans: tuple[Span, ...]
    boxes: np.ndarray  # (G, 4) float64, absolute xyxy


@dataclass(frozen=True)
class FlickrSample:
    """One caption of one image: the unit of Flickr30K grounding evaluation (one prompt per sample)."""

    image_id: int  # id of this (image, caption) record in the annotation file
    file_name: str
    caption: str
    phrases: tuple[FlickrPhrase, ...]
    width: int
    height: int
    original_image_id: Any = None  # Flickr30K image id
    sentence_id: Any = None


def load_flickr_grounding(ann_file: str | Path, merge_boxes: bool = False) -> list[FlickrSample]:
    """Read MDETR's `final_flickr_{separate,merged}GT_{split}.json` into samples.

    Image records carry `caption` and `tokens_positive_eval` (per phrase, a list of [start, end] character
    spans); each annotation carries its box (COCO xywh) and `tokens_positive`, the spans of every phrase
    it belongs to. A phrase's boxes are the annotations that list one of its spans.
    merge_boxes=True replaces each phrase's boxes by their enclosing box (the "merged" ground truth).
    """
    path = Path(ann_file)
    data = read_json(path, "Flickr30K annotation file")
    if not isinstance(data, Mapping) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not an MDETR grounding file (needs 'images' and 'annotations')")

    anns_by_image: dict[Any, list[Mapping[str, Any]]] = {}
    for ann in data["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)

    samples = []
    phrases_without_boxes = 0
    for img in data["images"]:
        for key in ("id", "file_name", "caption", "tokens_positive_eval"):
            if key not in img:
                raise ValueError(f"{path}: image record {img.get('id', '?')} has no '{key}'")
        caption = img["caption"]
        # Span -> boxes of every annotation that lists it.
        boxes_by_span: dict[Span, list[list[float]]] = {}
        for ann in anns_by_image.get(img["id"], []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            for s, e in ann.get("tokens_positive", []):
                boxes_by_span.setdefault((int(s), int(e)), []).append([x, y, x + w, y + h])
        phrases = []
        for spans in img["tokens_positive_eval"]:
            spans = tuple((int(s), int(e)) for s, e in spans)
            if not spans:
                continue
            boxes: list[list[float]] = []
            for span in spans:
                for box in boxes_by_span.get(span, []):
                    if box not in boxes:
                        boxes.append(box)
            if not boxes:
                phrases_without_boxes += 1
                continue
            arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if merge_boxes:
                arr = np.concatenate([arr[:, :2].min(axis=0), arr[:, 2:].max(axis=0)])[None, :]
            text = caption[spans[0][0]: spans[0][1]]
            phrases.append(FlickrPhrase(text=text, spans=spans, boxes=arr))
        samples.append(
            FlickrSample(
                image_id=img["id"],
                file_name=img["file_name"],
                caption=caption,
                phrases=tuple(phrases),
                width=int(img.get("width", 0)),
                height=int(img.get("height", 0)),
                original_image_id=img.get("original_img_id"),
                sentence_id=img.get("sentence_id"),
            )
        )
    if phrases_without_boxes:
        warnings.warn(
            f"{path}: {phrases_without_boxes} phrase(s) in tokens_positive_eval have no box and are not evaluated",
            stacklevel=2,
        )
    return samples


@dataclass
class PhrasePrediction:
    """Predicted boxes of one phrase (absolute xyxy) with their scores; order does not matter."""

    boxes: np.ndarray
    scores: np.ndarray


def group_by_phrase(boxes_xyxy: Any, scores: Any, labels: Any, num_phrases: int) -> list[PhrasePrediction]:
    """Split one caption's detections into per-phrase predictions; label = phrase index + 1 (§4.4, §7.6)."""
    if hasattr(boxes_xyxy, "detach"):
        boxes_xyxy, scores, labels = (t.detach().cpu().numpy() for t in (boxes_xyxy, scores, labels))
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels must match")
    return [PhrasePrediction(boxes[labels == j + 1], scores[labels == j + 1]) for j in range(num_phrases)]


def box_iou_xyxy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes, continuous coordinates; 0 where the union is empty."""
    b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def phrase_hits(
    prediction: PhrasePrediction, gt_boxes: np.ndarray, topk: Sequence[int], iou_threshold: float = 0.5
) -> dict[int, bool]:
    """For each k: does any of the k best-scored boxes reach `iou_threshold` with any ground-truth box?"""
    if len(prediction.scores) == 0:
        return {k: False for k in topk}
    order = np.argsort(-np.asarray(prediction.scores), kind="stable")
    best_iou = box_iou_xyxy(np.asarray(prediction.boxes)[order], gt_boxes).max(axis=1)  # per ranked box
    return {k: bool((best_iou[:k] >= iou_threshold).any()) for k in topk}


@dataclass
class FlickrRecallResult:
    """Recall@k over all evaluated phrases, with counts."""

    recall: dict[int, float]
    num_phrases: int
    num_samples: int
    num_missing_samples: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view: {"R@1": ..., ...} plus counts."""
        return {
            "recall": {f"R@{k}": v for k, v in self.recall.items()},
            "num_phrases": self.num_phrases,
            "num_samples": self.num_samples,
            "num_missing_samples": self.num_missing_samples,
            "warnings": list(self.warnings),
        }


def evaluate_flickr_recall(
    samples: Sequence[FlickrSample],
    predictions: Mapping[Any, Sequence[PhrasePrediction]],
    topk: Sequence[int] = DEFAULT_TOPK,
    iou_threshold: float = 0.5,
) -> FlickrRecallResult:
    """Recall@k (any-box protocol) of per-phrase predictions keyed by sample `image_id`.

    predictions[sample.image_id][j] holds the boxes predicted for sample.phrases[j]. Samples without an
    entry count every phrase as a miss (with a warning), so a partial run never overstates recall.
    """
    if any(k <= 0 for k in topk):
        raise ValueError(f"topk values must be positive, got {list(topk)}")
    hits = {k: 0 for k in topk}
    num_phrases = 0
    missing = 0
    for sample in samples:
        if not sample.phrases:
            continue
        preds = predictions.get(sample.image_id)
        if preds is None:
            missing += 1
            num_phrases += len(sample.phrases)
            continue
        if len(preds) != len(sample.phrases):
            raise ValueError(
                f"sample {sample.image_id} ({sample.file_name}): {len(preds)} phrase predictions for "
                f"{len(sample.phrases)} phrases"
            )
        for phrase, pred in zip(sample.phrases, preds):
            num_phrases += 1
            for k, hit in phrase_hits(pred, phrase.boxes, topk, iou_threshold).items():
                hits[k] += hit
    notes = []
    if missing:
        msg = f"{missing} sample(s) have no predictions; their phrases count as misses"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    recall = {k: (hits[k] / num_phrases if num_phrases else 0.0) for k in topk}
    return FlickrRecallResult(
        recall=recall,
        num_phrases=num_phrases,
        num_samples=sum(1 for s in samples if s.phrases),
        num_missing_samples=missing,
        warnings=notes,
    )
