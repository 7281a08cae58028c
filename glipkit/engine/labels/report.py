"""`glipkit report`: one pass over the label tables -> `report.json`, `report.md` and `report.html`.

Statistics per run and per table (shard) come from evaluation/label_stats.py; with a gold COCO subset, the labels
of the gold images are matched to it (evaluation/label_quality.py): precision / recall / F1 per score threshold,
overall and per category, the threshold that maximises F1, and COCO AP; and the same curve for the same boxes
matched to gold boxes of any category (a teacher that finds the objects but names them wrong scores high there
and low above).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from glipkit.data.labels import exclusive_boxes, read_labelled
from glipkit.data.tables import label_table_paths
from glipkit.evaluation.label_quality import QualityCounter, best_threshold, coco_ap, read_gold
from glipkit.evaluation.label_stats import LabelStats
from glipkit.export.categories import CategoryMap, normalise_phrase
from glipkit.files import write_json_atomic, write_text_atomic
from glipkit.viz.report_page import report_html, report_markdown


@dataclass
class ReportSettings:
    gold: Path | None = None  # COCO json of a gold subset
    classes: CategoryMap | None = None  # phrase -> class; class names must be gold category names
    iou: float = 0.5


@dataclass
class LabelReport:
    data: dict[str, Any]
    paths: list[Path] = field(default_factory=list)
    summary: str = ""


def gold_category_map(names: dict[int, str], classes: CategoryMap | None):
    """phrase text -> gold category id (or None): through the classes map when given, else by the gold names."""
    by_name = {normalise_phrase(name): cid for cid, name in names.items()}
    if classes is None:
        ids = list(names)
        closed = CategoryMap.from_classes([names[c] for c in ids])
        return lambda text: None if (i := closed.category(text)) is None else ids[i]
    unknown = [n for n in classes.names if normalise_phrase(n) not in by_name]
    if unknown:
        raise ValueError(f"--classes names {unknown[0]!r}, which is not a category of the gold file")
    return lambda text: None if (i := classes.category(text)) is None else by_name[normalise_phrase(classes.names[i])]


def make_report(labels: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                settings: ReportSettings | None = None) -> LabelReport:
    """Compute the report of `labels` (a label-table spec) and write it to `out` (default LABELS/_report)."""
    settings = settings or ReportSettings()
    tables = label_table_paths(labels)
    if out is None:
        out = Path(labels) / "_report" if isinstance(labels, (str, os.PathLike)) and Path(labels).is_dir() \
            else Path("report")
    out = Path(out)
    run, shards = LabelStats(), {}
    gold = quality = any_name = category_of = None
    records: list[dict] = []
    covered: set = set()
    unmatched_boxes = 0
    if settings.gold is not None:
        gold_data, names, gold_images = read_gold(settings.gold)
        category_of = gold_category_map(names, settings.classes)
        quality, any_name = QualityCounter(settings.iou), QualityCounter(settings.iou)
        gold = (gold_data, names, gold_images)

    for item in read_labelled(tables):
        labels_ = item.labels
        texts = [labels_.phrases[int(p)][0] for p in labels_.phrase_index]
        area = float(max(labels_.width, 1) * max(labels_.height, 1))
        boxes = exclusive_boxes(labels_.boxes)
        sizes = np.sqrt(np.prod((boxes[:, 2:] - boxes[:, :2]).clip(min=0), axis=1) / area)
        normalised = [normalise_phrase(t) for t in texts]
        for stats in (run, shards.setdefault(item.table.name, LabelStats())):
            stats.add(labels_.scores, sizes, labels_.phrases, normalised, item.flags)
        if gold is None or item.key not in gold[2]:
            continue
        target = gold[2][item.key]
        if target.image_id in covered:
            continue
        covered.add(target.image_id)
        ids = [category_of(t) for t in texts]
        keep = np.array([c is not None for c in ids], bool).reshape(-1)
        unmatched_boxes += int((~keep).sum())
        categories = np.array([c for c in ids if c is not None], np.int64)
        quality.add(boxes[keep], labels_.scores[keep].astype(np.float64), categories, target)
        # The same boxes against every gold box, as if all had one category: localisation without naming.
        any_name.add(boxes[keep], labels_.scores[keep].astype(np.float64), np.zeros(int(keep.sum()), np.int64),
                     replace(target, categories=[0] * len(target.categories)))
        for (x0, y0, x1, y1), score, category in zip(boxes[keep].tolist(), labels_.scores[keep].tolist(),
                                                     categories.tolist()):
            records.append({"image_id": target.image_id, "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})

    data: dict[str, Any] = {"labels": [str(t) for t in tables], "run": run.to_dict(),
                            "shards": {name: stats.to_dict() for name, stats in shards.items()}}
    summary = f"{run.images} images, {run.boxes} boxes ({run.to_dict()['boxes_per_image']} per image)"
    if gold is not None:
        gold_data, names, _ = gold
        if not covered:
            raise ValueError(f"{settings.gold}: no gold image's file name or id is a labelled key")
        curve = quality.curve()
        best = best_threshold(curve)
        per_category = {}
        for cid, name in names.items():
            if quality.gold.get(cid) or quality.scores.get(cid):
                cat_curve = quality.curve([cid])
                per_category[name] = {"gold_boxes": quality.gold.get(cid, 0), "curve": cat_curve,
                                      "best": best_threshold(cat_curve)}
        data["gold"] = {"file": str(settings.gold), "images": len(covered), "iou": settings.iou,
                        "boxes_without_gold_category": unmatched_boxes, "curve": curve, "best": best,
                        "any_name_curve": any_name.curve(), "per_category": per_category,
                        **coco_ap(gold_data, sorted(covered, key=str), records)}
        summary += (f"; against {len(covered)} gold images: best F1 {best['f1']:.3f} at score >= "
                    f"{best['threshold']:.2f} (precision {best['precision']:.3f}, recall {best['recall']:.3f}), "
                    f"AP {data['gold']['AP']:.3f}")
    paths = [write_json_atomic(out / "report.json", data),
             write_text_atomic(out / "report.md", report_markdown(data)),
             write_text_atomic(out / "report.html", report_html(data))]
    return LabelReport(data, paths, summary)
