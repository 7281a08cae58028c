"""LVIS box AP with the fixed-AP protocol of MDETR and GLIP (GLIP_SPEC.md §7.5), written in numpy.

Fixed AP (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the Details"):
keep the 10,000 highest-scoring detections of each category over the whole dataset, with no limit per
image, then score them with the LVIS rules:

* AP averaged over IoU 0.50:0.05:0.95 and 101 recall points, for the areas all / small / medium / large;
  APr / APc / APf average the categories by their `frequency` field ("r", "c", "f").
* Federated annotation: a category is evaluated only on images where it is annotated (it has boxes there)
  or listed in the image's `neg_category_ids`; detections on other images are dropped. On images that list
  it in `not_exhaustive_category_ids`, its unmatched detections are ignored instead of counted as false
  positives.

The matching (greedy by score, each ground-truth box used once, boxes outside the area range ignored) and
the interpolated precision follow the published LVIS API. The `lvis` package itself (0.5.3) is not used:
it imports OpenCV and matplotlib at import time and its accumulate step calls `np.float`, which NumPy 2
removed.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from glipkit.evaluation.coco import read_coco_json
from glipkit.files import read_json

LVIS_METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR", "ARs", "ARm", "ARl",
)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
FREQUENCY_GROUPS = ("r", "c", "f")
DEFAULT_TOPK_PER_CATEGORY = 10_000

PathLike = str | Path

_DET_DTYPE = np.dtype(
    [
        ("category_id", np.int64),
        ("image_id", np.int64),
        ("score", np.float64),
        ("seq", np.int64),
        ("bbox", np.float64, (4,)),
    ]
)


class TopKPerCategory:
    """Streams detections and keeps the `k` highest-scoring ones of each category (fixed AP's cap).

    Memory stays bounded (the kept detections plus a buffer of `buffer_size`) however many images are
    added. Ties in score keep the detection added first, as a stable sort of the whole stream would.
    """

    def __init__(self, k: int = DEFAULT_TOPK_PER_CATEGORY, buffer_size: int = 1_000_000):
        if k <= 0:
            raise ValueError("k must be positive")
        self.k = k
        self.buffer_size = buffer_size
        self._kept = np.empty(0, dtype=_DET_DTYPE)  # sorted by category, then best first
        self._pending: list[np.ndarray] = []
        self._pending_count = 0
        self.num_added = 0

    def add_arrays(self, image_id: int, boxes_xywh: Any, scores: Any, category_ids: Any) -> None:
        """Add one image's detections: (N, 4) COCO xywh boxes, (N,) scores, (N,) json category ids."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        self._add_rows(np.full(len(scores), int(image_id), dtype=np.int64), boxes_xywh, scores, category_ids)

    def add(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add COCO result records (`image_id`, `category_id`, `bbox` xywh, `score`), in stream order."""
        records = list(records)
        for i, rec in enumerate(records):
            missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in rec]
            if missing:
                raise ValueError(f"detection #{i} lacks {', '.join(missing)}")
            if len(rec["bbox"]) != 4:
                raise ValueError(f"detection #{i} has a bbox of {len(rec['bbox'])} numbers, expected 4 (x, y, w, h)")
        self._add_rows(
            np.array([r["image_id"] for r in records], dtype=np.int64),
            [r["bbox"] for r in records],
            [r["score"] for r in records],
            [r["category_id"] for r in records],
        )

    def _add_rows(self, image_ids: np.ndarray, boxes_xywh: Any, scores: Any, category_ids: Any) -> None:
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        cats = np.asarray(category_ids, dtype=np.int64).reshape(-1)
        if not (len(image_ids) == len(boxes) == len(scores) == len(cats)):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(cats)} categories must match")
        n = len(scores)
        if n == 0:
            return
        rows = np.empty(n, dtype=_DET_DTYPE)
        rows["category_id"] = cats
        rows["image_id"] = image_ids
        rows["score"] = scores
        rows["seq"] = np.arange(self.num_added, self.num_added + n)
        rows["bbox"] = boxes
        self.num_added += n
        self._pending.append(rows)
        self._pending_count += n
        if self._pending_count >= self.buffer_size:
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        rows = np.concatenate([self._kept, *self._pending])
        self._pending, self._pending_count = [], 0
        rows = rows[np.lexsort((rows["seq"], -rows["score"], rows["category_id"]))]
        cats = rows["category_id"]
        group_start = np.flatnonzero(np.r_[True, cats[1:] != cats[:-1]])
        rank = np.arange(len(rows)) - np.repeat(group_start, np.diff(np.r_[group_start, len(rows)]))
        self._kept = rows[rank < self.k]

    def per_category(self) -> dict[int, np.ndarray]:
        """Category id -> its kept detections (structured rows: image_id, score, seq, bbox), best first."""
        self._compact()
        cats = self._kept["category_id"]
        if len(cats) == 0:
            return {}
        starts = np.flatnonzero(np.r_[True, cats[1:] != cats[:-1]])
        ends = np.r_[starts[1:], len(cats)]
        return {int(cats[s]): self._kept[s:e] for s, e in zip(starts, ends)}

    def records(self) -> list[dict]:
        """The kept detections as COCO result records."""
        self._compact()
        return [
            {"image_id": int(r["image_id"]), "category_id": int(r["category_id"]), "bbox": r["bbox"].tolist(),
             "score": float(r["score"])}
            for r in self._kept
        ]

    def __len__(self) -> int:
        self._compact()
        return len(self._kept)


@dataclass
class LvisEvalResult:
    """Fixed-AP numbers (LVIS_METRIC_NAMES; -1 = undefined), AP per category, and bookkeeping counts."""

    metrics: dict[str, float]
    per_category_ap: dict[int, float]
    category_names: dict[int, str]
    category_frequency: dict[int, str]
    num_detections: int
    num_images: int
    topk_per_category: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return {
            "protocol": f"LVIS fixed AP, top {self.topk_per_category} detections per category",
            "metrics": dict(self.metrics),
            "per_category_ap": {
                str(cid): {
                    "name": self.category_names.get(cid, str(cid)),
                    "frequency": self.category_frequency.get(cid, ""),
                    "AP": ap,
                }
                for cid, ap in self.per_category_ap.items()
            },
            "num_detections": self.num_detections,
            "num_images": self.num_images,
            "warnings": list(self.warnings),
        }


@dataclass
class _LvisGroundTruth:
    image_ids: np.ndarray  # sorted
    negative_images: dict[int, np.ndarray]  # category -> images where it is known absent
    not_exhaustive_images: dict[int, np.ndarray]  # category -> images where its boxes may be incomplete
    cat_ids: list[int]  # sorted
    names: dict[int, str]
    frequency: dict[int, str]
    boxes: dict[int, dict[str, np.ndarray]]  # category -> image_id, bbox, area, ignore


def _parse_ground_truth(data: Mapping[str, Any], source: str, image_ids: Sequence[int] | None) -> _LvisGroundTruth:
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    images: set[int] = set()
    neg: dict[int, list[int]] = defaultdict(list)
    nel: dict[int, list[int]] = defaultdict(list)
    for img in data["images"]:
        img_id = int(img["id"])
        if wanted is not None and img_id not in wanted:
            continue
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in img:
                raise ValueError(
                    f"{source}: image {img_id} has no '{key}': LVIS evaluation needs LVIS-format annotations "
                    "(use the COCO evaluation for COCO-format files)"
                )
        images.add(img_id)
        for c in img["neg_category_ids"]:
            neg[int(c)].append(img_id)
        for c in img["not_exhaustive_category_ids"]:
            nel[int(c)].append(img_id)
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    per_cat: dict[int, list[tuple[int, list[float], float, int]]] = defaultdict(list)
    for i, ann in enumerate(data.get("annotations", [])):
        img_id = int(ann["image_id"])
        if img_id not in images:
            if wanted is None:
                raise ValueError(f"{source}: annotation #{i} refers to image {img_id}, which is not in 'images'")
            continue
        box = [float(v) for v in ann["bbox"]]
        area = float(ann["area"]) if "area" in ann else box[2] * box[3]
        per_cat[int(ann["category_id"])].append((img_id, box, area, int(bool(ann.get("ignore", 0)))))
    boxes = {}
    for cat, rows in per_cat.items():
        boxes[cat] = {
            "image_id": np.array([r[0] for r in rows], dtype=np.int64),
            "bbox": np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 4),
            "area": np.array([r[2] for r in rows], dtype=np.float64),
            "ignore": np.array([r[3] for r in rows], dtype=bool),
        }
    return _LvisGroundTruth(
        image_ids=np.array(sorted(images), dtype=np.int64),
        negative_images={c: np.unique(np.array(v, dtype=np.int64)) for c, v in neg.items()},
        not_exhaustive_images={c: np.unique(np.array(v, dtype=np.int64)) for c, v in nel.items()},
        cat_ids=[int(c["id"]) for c in cats],
        names={int(c["id"]): str(c.get("name", c["id"])) for c in cats},
        frequency={int(c["id"]): str(c.get("frequency", "")) for c in cats},
        boxes=boxes,
    )


def _collect_detections(
    detections: PathLike | Iterable[Mapping[str, Any]] | TopKPerCategory,
    known_images: set[int],
    restrict: bool,
    topk: int,
) -> dict[int, np.ndarray]:
    """Category -> top-k detections (structured rows, best first), after checking image ids."""
    if isinstance(detections, TopKPerCategory):
        if detections.k > topk:
            raise ValueError(f"the detections were capped at {detections.k} per category, above topk={topk}")
        known = np.fromiter(known_images, dtype=np.int64)
        keep = {}
        for cat, rows in detections.per_category().items():
            inside = np.isin(rows["image_id"], known)
            if not inside.all() and not restrict:
                bad = sorted(set(rows["image_id"][~inside].tolist()))
                raise ValueError(f"detections on {len(bad)} image(s) not in the ground truth, e.g. {bad[:5]}")
            keep[cat] = rows[inside][:topk]
        return keep
    records = read_json(detections, "detections file") if isinstance(detections, (str, Path)) else detections
    if isinstance(records, Mapping):
        raise ValueError("detections: expected a list of records, got a JSON object")
    records = list(records)
    unknown = {int(r["image_id"]) for r in records if "image_id" in r} - known_images
    if unknown and not restrict:
        bad = sorted(unknown)
        raise ValueError(f"detections on {len(bad)} image(s) not in the ground truth, e.g. {bad[:5]}")
    stream = TopKPerCategory(topk)
    stream.add(r for r in records if int(r.get("image_id", -1)) not in unknown)
    return stream.per_category()


def _box_iou_xywh(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes, continuous coordinates (no +1), as pycocotools computes for boxes."""
    dx1, dy1 = dt[:, 0:1], dt[:, 1:2]
    dx2, dy2 = dx1 + dt[:, 2:3], dy1 + dt[:, 3:4]
    gx1, gy1 = gt[None, :, 0], gt[None, :, 1]
    gx2, gy2 = gx1 + gt[None, :, 2], gy1 + gt[None, :, 3]
    iw = np.clip(np.minimum(dx2, gx2) - np.maximum(dx1, gx1), 0, None)
    ih = np.clip(np.minimum(dy2, gy2) - np.maximum(dy1, gy1), 0, None)
    inter = iw * ih
    union = (dt[:, 2:3] * dt[:, 3:4]) + (gt[None, :, 2] * gt[None, :, 3]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the maximum along the last axis, the last one among ties (COCO keeps the later box on ties)."""
    g = values.shape[-1]
    return g - 1 - np.argmax(values[..., ::-1], axis=-1)


def _match_image(ious: np.ndarray, gt_ignore: np.ndarray, thresholds: np.ndarray):
    """Greedy matching of one image's detections (rows of `ious`, best score first) to its boxes.

    gt_ignore: (S, G) per setting (area range x IoU threshold); thresholds: (S,).
    Returns matched (S, D) and matched_to_ignored (S, D). Unmatched boxes are preferred to ignored ones; among
    equally good boxes the later one wins, as in the LVIS/COCO reference loop.
    """
    num_settings = len(thresholds)
    num_dt, num_gt = ious.shape
    matched = np.zeros((num_settings, num_dt), dtype=bool)
    to_ignored = np.zeros((num_settings, num_dt), dtype=bool)
    gt_taken = np.zeros((num_settings, num_gt), dtype=bool)
    thr = np.minimum(thresholds, 1 - 1e-10)[:, None]
    rows = np.arange(num_settings)
    for d in np.flatnonzero(ious.max(axis=1) >= thr.min()):
        cand = ~gt_taken & (ious[d][None, :] >= thr)
        regular = np.where(cand & ~gt_ignore, ious[d][None, :], -1.0)
        ignored = np.where(cand & gt_ignore, ious[d][None, :], -1.0)
        has_regular = (regular >= 0).any(axis=1)
        has_ignored = (ignored >= 0).any(axis=1)
        pick = np.where(has_regular, _last_argmax(regular), _last_argmax(ignored))
        hit = has_regular | has_ignored
        matched[:, d] = hit
        to_ignored[:, d] = hit & ~has_regular
        gt_taken[rows[hit], pick[hit]] = True
    return matched, to_ignored


def _evaluate_category(gt: _LvisGroundTruth, cat: int, dets: np.ndarray | None):
    """precision (T, R, A) and recall (T, A) of one category; -1 where it has no ground truth."""
    num_t, num_r, num_a = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(AREA_RANGES)
    precision = -np.ones((num_t, num_r, num_a))
    recall = -np.ones((num_t, num_a))
    boxes = gt.boxes.get(cat)
    if boxes is None or len(boxes["image_id"]) == 0:
        return precision, recall
    area_lo = np.array([lo for lo, _ in AREA_RANGES.values()])
    area_hi = np.array([hi for _, hi in AREA_RANGES.values()])
    gt_out_of_range = (boxes["area"][None, :] < area_lo[:, None]) | (boxes["area"][None, :] > area_hi[:, None])
    gt_ignore_all = gt_out_of_range | boxes["ignore"][None, :]  # (A, G_all)
    num_gt = (~gt_ignore_all).sum(axis=1)  # (A,)

    if dets is None:
        dets = np.empty(0, dtype=_DET_DTYPE)
    # Federated rule: only images where the category is annotated or known absent count.
    positive_images = np.unique(boxes["image_id"])
    no_images = np.empty(0, dtype=np.int64)
    evaluated = np.union1d(positive_images, gt.negative_images.get(cat, no_images))
    dets = dets[np.isin(dets["image_id"], evaluated)]
    # Final ranking: score, then image id, then input order (the LVIS API's concatenation + stable sort).
    dets = dets[np.lexsort((dets["seq"], dets["image_id"], -dets["score"]))]
    num_dt = len(dets)

    settings_t = np.tile(IOU_THRESHOLDS, num_a)  # setting s = a * T + t
    matched = np.zeros((num_a * num_t, num_dt), dtype=bool)
    to_ignored = np.zeros((num_a * num_t, num_dt), dtype=bool)
    if num_dt:
        gt_order = np.argsort(boxes["image_id"], kind="stable")
        gt_imgs = boxes["image_id"][gt_order]
        dt_imgs = dets["image_id"]
        for img in np.intersect1d(positive_images, dt_imgs):
            g = gt_order[np.searchsorted(gt_imgs, img, "left"): np.searchsorted(gt_imgs, img, "right")]
            d = np.flatnonzero(dt_imgs == img)  # already best-first
            ious = _box_iou_xywh(dets["bbox"][d], boxes["bbox"][g])
            ignore = np.repeat(gt_ignore_all[:, g], num_t, axis=0)  # (A*T, G)
            m, ti = _match_image(ious, ignore, settings_t)
            matched[:, d] = m
            to_ignored[:, d] = ti

    dt_area = dets["bbox"][:, 2] * dets["bbox"][:, 3]
    dt_out_of_range = (dt_area[None, :] < area_lo[:, None]) | (dt_area[None, :] > area_hi[:, None])  # (A, N)
    not_exhaustive = np.isin(dets["image_id"], gt.not_exhaustive_images.get(cat, no_images))
    unmatched_ignore = np.repeat(dt_out_of_range | not_exhaustive[None, :], num_t, axis=0)
    ignore = to_ignored | (~matched & unmatched_ignore)
    tp = np.cumsum(matched & ~ignore, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched & ~ignore, axis=1, dtype=np.float64)

    for a in range(num_a):
        if num_gt[a] == 0:
            continue
        for t in range(num_t):
            s = a * num_t + t
            if num_dt == 0:
                precision[t, :, a] = 0.0
                recall[t, a] = 0.0
                continue
            rc = tp[s] / num_gt[a]
            pr = tp[s] / (tp[s] + fp[s] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope: best precision at >= this recall
            idx = np.searchsorted(rc, RECALL_POINTS, side="left")
            precision[t, :, a] = np.where(idx < num_dt, pr[np.minimum(idx, num_dt - 1)], 0.0)
            recall[t, a] = rc[-1]
    return precision, recall


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def evaluate_lvis_fixed_ap(
    ground_truth: PathLike | Mapping[str, Any],
    detections: PathLike | Iterable[Mapping[str, Any]] | TopKPerCategory,
    topk_per_category: int = DEFAULT_TOPK_PER_CATEGORY,
    image_ids: Sequence[int] | None = None,
) -> LvisEvalResult:
    """LVIS fixed AP (box) of COCO-style result records against an LVIS annotation file.

    `detections`: json path, list of records (`image_id`, `category_id`, `bbox` xywh without +1, `score`),
    or a TopKPerCategory that streamed them. Only the `topk_per_category` best per category count.
    `image_ids` evaluates a subset of the images (detections on other images are dropped); without it,
    detections on images missing from the annotations are an error.
    """
    source = str(ground_truth) if isinstance(ground_truth, (str, Path)) else "<dict>"
    gt = _parse_ground_truth(read_coco_json(ground_truth, "LVIS annotation file"), source, image_ids)
    known = set(gt.image_ids.tolist())
    per_cat_dets = _collect_detections(detections, known, image_ids is not None, topk_per_category)
    notes: list[str] = []
    num_dets = sum(len(v) for v in per_cat_dets.values())
    if num_dets == 0:
        msg = "no detections to evaluate: every AP is 0"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    stray = sorted(set(per_cat_dets) - set(gt.cat_ids))
    if stray:
        msg = f"{len(stray)} detection category_id(s) are not in the annotations and are ignored, e.g. {stray[:5]}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)

    num_k = len(gt.cat_ids)
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), num_k, len(AREA_RANGES)))
    recall = -np.ones((len(IOU_THRESHOLDS), num_k, len(AREA_RANGES)))
    for k, cat in enumerate(gt.cat_ids):
        precision[:, :, k, :], recall[:, k, :] = _evaluate_category(gt, cat, per_cat_dets.get(cat))

    area_index = {name: i for i, name in enumerate(AREA_RANGES)}
    t50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    groups = {f: [k for k, c in enumerate(gt.cat_ids) if gt.frequency[c] == f] for f in FREQUENCY_GROUPS}
    all_a = area_index["all"]
    metrics = {
        "AP": _mean_valid(precision[..., all_a]),
        "AP50": _mean_valid(precision[t50, ..., all_a]),
        "AP75": _mean_valid(precision[t75, ..., all_a]),
        "APs": _mean_valid(precision[..., area_index["small"]]),
        "APm": _mean_valid(precision[..., area_index["medium"]]),
        "APl": _mean_valid(precision[..., area_index["large"]]),
    }
    for f in FREQUENCY_GROUPS:
        metrics[f"AP{f}"] = _mean_valid(precision[:, :, groups[f], all_a])
    metrics["AR"] = _mean_valid(recall[..., all_a])
    metrics["ARs"] = _mean_valid(recall[..., area_index["small"]])
    metrics["ARm"] = _mean_valid(recall[..., area_index["medium"]])
    metrics["ARl"] = _mean_valid(recall[..., area_index["large"]])
    per_category = {cat: _mean_valid(precision[:, :, k, all_a]) for k, cat in enumerate(gt.cat_ids)}
    return LvisEvalResult(
        metrics={name: metrics[name] for name in LVIS_METRIC_NAMES},
        per_category_ap=per_category,
        category_names=gt.names,
        category_frequency=gt.frequency,
        num_detections=num_dets,
        num_images=len(gt.image_ids),
        topk_per_category=topk_per_category,
        warnings=notes,
    )
