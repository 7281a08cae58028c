"""`glipkit export`: label tables -> COCO, YOLO (ultralytics) or ODVG (Open-GroundingDino, mmdetection)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from glipkit.cli.app import app
from glipkit.cli.common import user_errors
from glipkit.cli.label_options import (ClassesFileOption, LabelsArgument, MaxBoxesOption, MinScoreOption, NmsOption,
                                       ShardsOption, category_map, label_filter)


class Format(str, Enum):
    coco = "coco"
    yolo = "yolo"
    odvg = "odvg"


@app.command("export")
def export_command(
    labels: LabelsArgument,
    to: Format = typer.Option(..., "--to", help="coco: instances.json + images/; yolo: images/ labels/ data.yaml; "
                              "odvg: odvg.jsonl + images/ (+ label_map.json with --classes or classes-mode tables)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    shards: ShardsOption = None,
    min_score: MinScoreOption = 0.0,
    min_boxes: int = typer.Option(1, "--min-boxes", min=0, help="Leave out images with fewer boxes (0: keep "
                                  "images without boxes as negatives)."),
    max_boxes: MaxBoxesOption = None,
    nms: NmsOption = None,
    classes: ClassesFileOption = None,
    images: bool = typer.Option(True, "--images/--no-images", help="Copy the images out of the shards (COCO "
                                "--no-images: file_name is the key)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=1.0, help="YOLO: share of images in "
                                       "val (by a seeded hash of the key)."),
    seed: int = typer.Option(0, "--seed", help="YOLO: seed of the train/val split."),
) -> None:
    """Export label tables for other trainers, with the images out of their shards.

    Boxes keep the teacher's score (COCO `score`, ODVG `score`). Exit code 1 if an image could not be read
    (each named on stderr), 2 for errors you can fix.
    """
    from glipkit.engine.labels.export import ExportSettings, export_labels

    with user_errors():
        settings = ExportSettings(to.value, label_filter(min_score, min_boxes, max_boxes, nms), category_map(classes),
                                  images, val_fraction, seed, shards)
        report = export_labels(labels, out, settings)
    mode = f" ({report.mode.upper()} records)" if report.mode else ""
    typer.echo(f"{report.images} images, {report.boxes} boxes, {len(report.categories)} categories{mode}: "
               f"{report.path}")
    for key, reason in report.missing:
        typer.echo(f"not exported: {key}: {reason}", err=True)
    if report.missing:
        raise typer.Exit(1)
