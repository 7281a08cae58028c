"""`glipkit predict`: ground a prompt in a few images and print (and optionally draw) the boxes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import DeviceOption, ModelOption, PrecisionOption, TokenizerOption, fail, user_errors


@app.command()
def predict(
    images: List[Path] = typer.Argument(..., help="Image files."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p",
                                         help="Phrases separated by '.', e.g. 'person. dog. red car'."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names (GLIP's detection prompt)."),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    box_threshold: float = typer.Option(0.5, help="Keep boxes with at least this score."),
    draw: Optional[Path] = typer.Option(None, help="Directory to save copies of the images with boxes drawn."),
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
) -> None:
    """Detect the phrases of a prompt (or a class list) in images."""
    from rich.console import Console
    from rich.table import Table

    from glipkit.engine.predict import predict_files
    from glipkit.engine.predictor import Predictor, PredictorSettings
    from glipkit.engine.runtime import load_model, resolve_device

    if (prompt is None) == (classes is None):
        fail("give exactly one of --prompt or --classes")
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    with user_errors():
        glip = load_model(model, tokenizer, resolve_device(device))
        predictor = Predictor(glip, PredictorSettings(precision=precision))
        results = predict_files(predictor, images, prompt, class_list, box_threshold, draw)
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
