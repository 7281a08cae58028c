"""`glipkit predict`: ground a prompt in a few images and print (and optionally draw) the boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import (INPUT, OUTPUT, SPEED, DeviceOption, ModelOption, PrecisionOption, TokenizerOption,
                                check_options, fail, user_errors)
from glipkit.text.class_list import CLASSES_HELP


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="Image files."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", rich_help_panel=INPUT,
                                         help="Phrases separated by '.', e.g. 'person. dog. red car'."),
    classes: Optional[str] = typer.Option(None, "--classes", metavar="'a. b'|FILE", rich_help_panel=INPUT,
                                          help=f"Or GLIP's detection prompt of a class list. {CLASSES_HELP}"),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    box_threshold: float = typer.Option(0.5, "--box-threshold", min=0.0, max=1.0, rich_help_panel=INPUT,
                                        help="Keep boxes with at least this score."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, rich_help_panel=SPEED,
                                   help="Images per model pass; 1 reproduces the official outputs exactly."),
    draw: Optional[Path] = typer.Option(None, "--draw", metavar="DIR", rich_help_panel=OUTPUT,
                                        help="Directory to save copies of the images with boxes drawn."),
    table: Optional[Path] = typer.Option(None, "--table", metavar="FILE", rich_help_panel=OUTPUT,
                                         help="Also write the boxes as a label table (e.g. preds.labels.parquet) "
                                         "for glipkit show / report / export."),
    as_json: bool = typer.Option(False, "--json", rich_help_panel=OUTPUT,
                                 help="Print one JSON object per image and line (image, boxes as xyxy pixels, "
                                 "scores, phrases) instead of tables."),
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
) -> None:
    """Detect the phrases of a prompt (or a class list) in images."""
    if (prompt is None) == (classes is None):
        fail("give exactly one of --prompt or --classes")
    with user_errors():
        from glipkit.text.class_list import parse_class_list

        class_list = parse_class_list(classes) if classes is not None else None
        check_options(device, draw=draw)
        from glipkit.engine.predict import predict_files
        from glipkit.engine.predictor import Predictor, PredictorSettings
        from glipkit.engine.runtime import load_model, resolve_device

        glip = load_model(model, tokenizer, resolve_device(device))
        predictor = Predictor(glip, PredictorSettings(precision=precision))
        results = predict_files(predictor, images, prompt, class_list, box_threshold, draw, batch_size)
        if table is not None:
            from glipkit.engine.predict import write_predictions_table

            write_predictions_table(results, table, prompt if prompt is not None else ". ".join(class_list))
    failed = [r for r in results if r.error is not None]
    results = [r for r in results if r.error is None]
    for result in failed:
        typer.echo(f"error: {result.error}", err=True)
    if as_json:
        for result in results:
            typer.echo(json.dumps({
                "image": str(result.path), "boxes": [[round(v, 2) for v in box] for box in result.boxes],
                "scores": [round(s, 4) for s in result.scores], "phrases": [result.phrases[i] for i in result.labels],
                "drawn": str(result.drawn) if result.drawn else None,
            }))
    else:
        _print_tables(results)
    if failed:
        raise typer.Exit(1)


def _print_tables(results) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for result in results:
        table = Table(title=f"{result.path} ({len(result.scores)} boxes)")
        for column in ("phrase", "score", "x0", "y0", "x1", "y1"):
            table.add_column(column)
        for box, score, label in zip(result.boxes, result.scores, result.labels):
            table.add_row(result.phrases[label], f"{score:.3f}", *(f"{v:.1f}" for v in box))
        console.print(table)
        if result.drawn:
            console.print(f"drawn: {result.drawn}")
