"""Options shared by the commands that read finished label tables: show, report, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

LabelsArgument = Annotated[str, typer.Argument(
    metavar="LABELS", help="pseudo-label (or predict) output: a directory of *.labels.parquet, a table, or a glob.")]
ShardsOption = Annotated[Optional[str], typer.Option(
    "--shards", metavar="SPEC", help="Where the shards are, matched by file name (default: the tables' shard "
    "column, as written or relative to the tables).")]
MinScoreOption = Annotated[float, typer.Option("--min-score", min=0.0, max=1.0, help="Keep boxes with at least "
                                                                                     "this score.")]
MaxBoxesOption = Annotated[Optional[int], typer.Option("--max-boxes", min=1, help="Keep the best N boxes per "
                                                                                  "image.")]
NmsOption = Annotated[Optional[float], typer.Option("--nms", min=0.01, max=1.0, help="Per-phrase NMS at this IoU "
                                                                                     "(off by default).")]
ClassesFileOption = Annotated[Optional[Path], typer.Option(
    "--classes", metavar="FILE", help="Categories to keep, merging phrases: one class a line ('dog: puppy, "
    "hound'), a JSON list or {class: [phrases]}, or COCO json. Default: one category per normalised phrase.")]


def label_filter(min_score: float, min_boxes: int, max_boxes: Optional[int], nms: Optional[float]):
    """The load-time filters (data/pseudo.PseudoFilter) from the options above."""
    from glipkit.data.pseudo import PseudoFilter

    return PseudoFilter(min_score=min_score, min_boxes=min_boxes, nms_iou=nms, max_boxes=max_boxes)


def category_map(classes: Optional[Path]):
    """The classes file's category map, or None (normalised phrases)."""
    if classes is None:
        return None
    from glipkit.export.categories import read_classes_file

    return read_classes_file(classes)
