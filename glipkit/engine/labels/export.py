"""`glipkit export`: label tables -> a COCO, YOLO or ODVG dataset, filtered, with the images out of the shards.

Two passes over the tables (they are small beside the images): the first finds the categories (normalised
phrase texts, unless a classes map is given) and whether every row grounds caption spans; the second reads each
table's shard once, in file order, and writes each kept image with its boxes as it arrives. A key missing from
its shard, or an unreadable shard, is reported by key and reason; the export goes on and says so at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from glipkit.data.labels import LabelledImage, read_images, read_labelled, resolve_shards
from glipkit.data.pseudo import PseudoFilter
from glipkit.data.shards import shard_stem
from glipkit.data.tables import read_metadata
from glipkit.export.categories import CategoryMap
from glipkit.export.coco import CocoWriter
from glipkit.export.image import ExportImage, safe_file_name
from glipkit.export.odvg import OdvgWriter
from glipkit.export.yolo import YoloWriter
from glipkit.errors import GlipkitUsageError

FORMATS = ("coco", "yolo", "odvg")


@dataclass
class ExportSettings:
    """What goes out: the format, load-time filters, the category map (None: normalised phrases), images."""

    to: str = "coco"
    filters: PseudoFilter = field(default_factory=PseudoFilter)
    classes: CategoryMap | None = None
    images: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    shards: str | Sequence[str] | None = None  # where the shards are (default: the tables' `shard` column)


@dataclass
class ExportReport:
    out: Path
    path: Path  # the annotation file (instances.json, data.yaml, odvg.jsonl)
    images: int = 0
    boxes: int = 0
    rows: int = 0  # rows kept by the filters
    categories: list[str] = field(default_factory=list)
    mode: str = ""  # odvg: "od" or "vg"
    missing: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of images not exported


def to_export_image(item: LabelledImage, categories: CategoryMap, file_name: str) -> ExportImage:
    """A row's kept boxes whose phrase has a category."""
    labels = item.labels
    per_box = [categories.category(labels.phrases[int(p)][0]) for p in labels.phrase_index]
    keep = np.array([c is not None for c in per_box], bool).reshape(-1)
    return ExportImage(
        labels.key, file_name, labels.width, labels.height, labels.caption, labels.boxes[keep], labels.scores[keep],
        np.array([c for c in per_box if c is not None], np.int64),
        [labels.phrases[int(p)] for p, k in zip(labels.phrase_index, keep) if k])


def table_classes(tables: Sequence[Path], grounded: bool) -> CategoryMap | None:
    """The class list of classes-mode tables, in the order pseudo-label was given it (None when they differ)."""
    if grounded or not tables:
        return None
    lists = {tuple((read_metadata(t)["settings"] or {}).get("classes") or ()) for t in tables}
    return CategoryMap.from_classes(list(lists.pop())) if len(lists) == 1 and () not in lists else None


def export_labels(labels: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
                  settings: ExportSettings | None = None) -> ExportReport:
    """Write the export of `labels` (a label-table spec) to `out`; see the module docstring."""
    settings = settings or ExportSettings()
    if settings.to not in FORMATS:
        raise GlipkitUsageError(f"--to must be one of {', '.join(FORMATS)}, not {settings.to!r}")
    if settings.to == "yolo" and not settings.images:
        raise GlipkitUsageError("a YOLO dataset needs its images: drop --no-images")
    min_boxes = settings.filters.min_boxes
    loose = PseudoFilter(**{**settings.filters.__dict__, "min_boxes": 0})

    texts, grounded, shard_of = set(), True, {}
    for item in read_labelled(labels, loose):
        texts.update(item.labels.phrases[int(p)][0] for p in item.labels.phrase_index)
        grounded &= item.grounded
        shard_of.setdefault(item.table, item)
    categories = settings.classes or table_classes(list(shard_of), grounded) or CategoryMap.from_phrases(texts)
    vg = settings.to == "odvg" and settings.classes is None and grounded
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = resolve_shards(shard_of.values(), settings.shards) if settings.images else {}

    info = {"description": "glipkit export", "labels": [str(p) for p in shard_of]}
    if settings.to == "coco":
        writer = CocoWriter(out, categories.names, settings.images, info)
    elif settings.to == "yolo":
        writer = YoloWriter(out, categories.names, settings.val_fraction, settings.seed)
    else:
        writer = OdvgWriter(out, None if vg else categories.names, settings.images)
    report = ExportReport(out, out, categories=list(categories.names), mode=("vg" if vg else "od")
                          if settings.to == "odvg" else "")
    used: set[str] = set()
    try:
        for table, first in shard_of.items():
            pending = {}
            for item in read_labelled(table, loose):
                image = to_export_image(item, categories, "")
                if len(image.scores) >= min_boxes:
                    pending[item.key] = image
            report.rows += len(pending)
            if not settings.images:
                for image in pending.values():
                    image.file_name = image.key
                    _write(writer, image, None, report)
                continue
            for key, extension, data, reason in read_images(shards[first.shard], list(pending)):
                if data is None:
                    report.missing.append((key, reason or "no image"))
                    continue
                image = pending[key]
                name = safe_file_name(key, extension)
                if name in used:  # the same key in two shards
                    name = safe_file_name(f"{shard_stem(first.shard)}_{key}", extension)
                used.add(name)
                image.file_name = name
                _write(writer, image, data, report)
    except BaseException:
        if isinstance(writer, OdvgWriter):
            writer.abort()
        raise
    report.path = writer.close()
    return report


def _write(writer, image: ExportImage, data: bytes | None, report: ExportReport) -> None:
    writer.add(image, data)
    report.images += 1
    report.boxes += len(image.scores)
