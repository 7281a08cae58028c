"""COCO box AP with pycocotools, and model detections -> COCO result records (GLIP_SPEC.md §7.4)."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from glipkit.files import read_json

# The 12 numbers of COCOeval.summarize() for boxes, in its order.
COCO_METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

PathLike = str | Path


@dataclass
class CocoEvalResult:
    """Box AP of one detection set: the 12 COCO numbers, AP per category, and pycocotools' printed summary.

    Values are in [0, 1]; -1 means "undefined" (pycocotools' convention: no ground truth in that slice).
    """

    metrics: dict[str, float]
    per_category_ap: dict[int, float]
    category_names: dict[int, str]
    num_detections: int
    num_images: int
    summary: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (category ids become strings, as JSON keys must be)."""
        return {
            "metrics": dict(self.metrics),
            "per_category_ap": {
                str(cid): {"name": self.category_names.get(cid, str(cid)), "AP": ap}
                for cid, ap in self.per_category_ap.items()
            },
            "num_detections": self.num_detections,
            "num_images": self.num_images,
            "warnings": list(self.warnings),
        }


def _quiet_coco(dataset: dict):
    """A pycocotools COCO object built from an in-memory dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_coco_json(source: PathLike | Mapping[str, Any], what: str = "COCO annotation file") -> Mapping[str, Any]:
    """A COCO-style json file (or its dict), checked to have `images` and `categories`; errors name the file."""
    path = isinstance(source, (str, Path))
    data = read_json(source, what) if path else source
    if not isinstance(data, Mapping) or "images" not in data or "categories" not in data:
        raise ValueError(f"{source if path else '<dict>'}: not a COCO-style {what} (needs 'images' and 'categories')")
    return data


def load_coco_ground_truth(annotations: PathLike | Mapping[str, Any]):
    """Load a COCO detection json (path or dict) into a pycocotools COCO object, quietly.

    Annotations without `iscrowd` get 0 and without `area` get w*h, so generated sets evaluate as COCO does.
    """
    source = str(annotations) if isinstance(annotations, (str, Path)) else "<dict>"
    data = read_coco_json(annotations)
    dataset = dict(data)
    anns = []
    for i, ann in enumerate(data.get("annotations", [])):
        if "bbox" not in ann or "image_id" not in ann or "category_id" not in ann:
            raise ValueError(f"{source}: annotation #{i} needs 'image_id', 'category_id' and 'bbox'")
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("id", i + 1)
        anns.append(ann)
    dataset["annotations"] = anns
    return _quiet_coco(dataset)


def load_detections(detections: PathLike | Iterable[Mapping[str, Any]]) -> list[dict]:
    """Read COCO result records (`image_id`, `category_id`, `bbox` xywh, `score`) from a json file or a list.

    Returns fresh dicts, so callers' records are never modified by pycocotools.
    """
    source = str(detections) if isinstance(detections, (str, Path)) else "<detections>"
    records = read_json(detections, "detections file") if isinstance(detections, (str, Path)) else detections
    if isinstance(records, Mapping):
        raise ValueError(f"{source}: expected a list of detections, got a JSON object")
    out = []
    for i, rec in enumerate(records):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in rec]
        if missing:
            raise ValueError(f"{source}: detection #{i} lacks {', '.join(missing)}")
        bbox = [float(v) for v in rec["bbox"]]
        if len(bbox) != 4:
            raise ValueError(f"{source}: detection #{i} has a bbox of {len(bbox)} numbers, expected 4 (x, y, w, h)")
        out.append(
            {"image_id": rec["image_id"], "category_id": rec["category_id"], "bbox": bbox, "score": float(rec["score"])}
        )
    return out


def _result_coco(gt, records: list[dict]):
    """pycocotools' loadRes, silenced, and also for an empty list (where loadRes crashes on anns[0])."""
    if records:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(records)
    return _quiet_coco(
        {
            "images": list(gt.dataset["images"]),
            "categories": copy.deepcopy(gt.dataset["categories"]),
            "annotations": [],
        }
    )


def evaluate_coco(
    ground_truth: PathLike | Mapping[str, Any] | Any,
    detections: PathLike | Iterable[Mapping[str, Any]],
    image_ids: Sequence[int] | None = None,
) -> CocoEvalResult:
    """Score box detections against COCO ground truth with pycocotools' COCOeval (bbox).

    `ground_truth`: json path, dict or a pycocotools COCO object. `detections`: json path or list of records.
    `image_ids` restricts the evaluation to those images (e.g. the first N of a quick run).
    An empty detection list scores 0 (with a warning) instead of crashing pycocotools.
    """
    from pycocotools.cocoeval import COCOeval

    gt = ground_truth if hasattr(ground_truth, "loadRes") else load_coco_ground_truth(ground_truth)
    records = load_detections(detections)
    notes: list[str] = []

    known_images = set(gt.getImgIds())
    unknown = sorted({r["image_id"] for r in records} - known_images, key=str)
    if unknown:
        raise ValueError(
            f"{len(unknown)} detection image_id(s) are not in the ground truth, e.g. {unknown[:5]}: "
            "detections and annotations do not belong together"
        )
    known_cats = set(gt.getCatIds())
    stray = sorted({r["category_id"] for r in records} - known_cats, key=str)
    if stray:
        msg = f"{len(stray)} detection category_id(s) are not in the ground truth and are ignored, e.g. {stray[:5]}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    if image_ids is not None:
        image_ids = [i for i in image_ids if i in known_images]
        wanted = set(image_ids)
        records = [r for r in records if r["image_id"] in wanted]
    if not records:
        msg = "no detections to evaluate: every AP is 0"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)

    dt = _result_coco(gt, records)
    evaluator = COCOeval(gt, dt, iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = list(image_ids)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()

    metrics = {name: float(v) for name, v in zip(COCO_METRIC_NAMES, evaluator.stats)}
    # precision: [IoU thresholds, recall points, categories, area ranges, maxDets]; area "all", maxDets 100.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_category = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        p = p[p > -1]
        per_category[int(cat_id)] = float(p.mean()) if p.size else -1.0
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt.dataset["categories"]}
    return CocoEvalResult(
        metrics=metrics,
        per_category_ap=per_category,
        category_names=names,
        num_detections=len(records),
        num_images=len(evaluator.params.imgIds),
        summary=summary.getvalue(),
        warnings=notes,
    )


def category_label_map(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Contiguous label (1..K, categories sorted by id) -> json category id, the order GLIP prompts in (§4.3)."""
    ids = sorted(int(c["id"]) for c in categories)
    return {label: cat_id for label, cat_id in enumerate(ids, start=1)}


def _as_numpy(x, dtype, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    return arr


def detections_to_coco(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    label_to_category_id: Mapping[int, int],
    plus_one: bool = True,
) -> list[dict]:
    """One image's detections (absolute pixel xyxy, contiguous labels) as COCO result records (xywh).

    plus_one=True writes w = x2 - x1 + 1 as the official COCO export does (§7.4); the LVIS export uses
    w = x2 - x1 (plus_one=False). Labels map to json category ids through `label_to_category_id`.
    """
    boxes = _as_numpy(boxes_xyxy, np.float64, (4,))
    scores = _as_numpy(scores, np.float64)
    labels = _as_numpy(labels, np.int64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {image_id}: boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(
            f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels must match"
        )
    extra = 1.0 if plus_one else 0.0
    records = []
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        if label not in label_to_category_id:
            raise ValueError(f"image {image_id}: label {label} has no category id (known: 1..{len(label_to_category_id)})")
        records.append(
            {
                "image_id": image_id,
                "category_id": int(label_to_category_id[label]),
                "bbox": [x1, y1, x2 - x1 + extra, y2 - y1 + extra],
                "score": score,
            }
        )
    return records
