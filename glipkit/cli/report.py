"""`glipkit report`: how good are the labels? Histograms, kept fractions, top phrases, flags; against gold,
precision / recall / AP per score threshold and the threshold that maximises F1."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import user_errors
from glipkit.cli.label_options import ClassesFileOption, LabelsArgument, category_map


@app.command("report")
def report_command(
    labels: LabelsArgument,
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for report.json, report.md and report.html "
                                       "(default: LABELS/_report when LABELS is a directory)."),
    gold: Optional[Path] = typer.Option(None, "--gold", metavar="COCO_JSON",
                                        help="Gold boxes of a subset: COCO json whose image file names (without "
                                        "extension) or ids are the labelled keys."),
    classes: ClassesFileOption = None,
    iou: float = typer.Option(0.5, "--iou", min=0.05, max=0.95, help="IoU at which a label matches a gold box."),
) -> None:
    """Judge label tables: per run and per shard, score / boxes / phrases / box-size histograms, the share kept at
    each score threshold, top phrases and their mean scores, flags; with --gold, precision, recall, F1 and AP at
    each threshold, per category (phrases matched to gold categories by normalised text, or --classes), and for
    the same boxes matched to gold boxes of any category."""
    from glipkit.engine.labels.report import ReportSettings, make_report

    with user_errors():
        report = make_report(labels, out, ReportSettings(gold, category_map(classes), iou))
    typer.echo(report.summary)
    for path in report.paths:
        typer.echo(f"wrote {path}")
