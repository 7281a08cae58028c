"""`glipkit show`: a static HTML gallery of label tables (or predict results) that opens from file://."""

from __future__ import annotations

from pathlib import Path

import typer

from glipkit.cli.app import app
from glipkit.cli.common import user_errors
from glipkit.cli.label_options import LabelsArgument, MinScoreOption, ShardsOption


@app.command("show")
def show_command(
    labels: LabelsArgument,
    out: Path = typer.Option(Path("gallery"), "--out", help="Gallery directory (index.html, data.js, thumbs/)."),
    shards: ShardsOption = None,
    sample: int = typer.Option(500, "--sample", min=0, help="Show N images, drawn at random by --seed (0: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    min_score: MinScoreOption = 0.0,
    thumbnail: int = typer.Option(320, "--thumbnail", min=32, help="Thumbnail long side in pixels."),
    per_page: int = typer.Option(48, "--per-page", min=1, help="Images per page."),
) -> None:
    """Write a gallery: thumbnails with their boxes drawn by the page, a score slider and a phrase filter that
    act live, captions with the grounded phrases in their boxes' colours, sorting and pages.

    Open OUT/index.html in a browser (no server). Exit code 1 if an image could not be read.
    """
    from glipkit.engine.labels.gallery import GallerySettings, make_gallery

    with user_errors():
        report = make_gallery(labels, out, GallerySettings(sample, seed, min_score, thumbnail, per_page, shards))
    typer.echo(f"{report.images} images, {report.boxes} boxes: {report.path}")
    for key, reason in report.missing:
        typer.echo(f"not shown: {key}: {reason}", err=True)
    if report.missing:
        raise typer.Exit(1)
