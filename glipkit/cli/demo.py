"""`glipkit demo`: the main job end to end on built-in data (shards -> phrases -> pseudo-labels -> gallery)."""

from __future__ import annotations

from pathlib import Path

import typer

from glipkit.cli.app import app
from glipkit.cli.common import (INPUT, OUTPUT, DeviceOption, ModelOption, ProgressDisplay, ProgressOption,
                                TokenizerOption, check_options, user_errors)


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("glipkit-demo"), "--out", metavar="DIR", rich_help_panel=OUTPUT,
                             help="Where the shards, phrases, labels, gallery and report go."),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    device: DeviceOption = "auto",
    shards: int = typer.Option(2, "--shards", min=1, rich_help_panel=INPUT, help="Demo shards to write."),
    samples: int = typer.Option(16, "--samples", min=1, rich_help_panel=INPUT,
                                help="Image-caption pairs per shard (coloured shapes and objects)."),
    progress: ProgressOption = True,
) -> None:
    """Run the whole labelling job on built-in demo data and print where to look.

    Writes OUT/shards (synthetic WebDataset shards), OUT/phrases (extract-phrases), OUT/labels (pseudo-label with
    GLIP-T, downloaded on first use) and, when available, OUT/gallery and OUT/report. Offline:
    --model preset:glip-tiny-test runs the same steps with random weights.
    """
    from glipkit.engine.demo import run_demo

    interrupted = "Interrupted: run the same command again to resume."
    with ProgressDisplay(enabled=progress) as display, user_errors(display, interrupted):
        check_options(device, out=out)
        report = run_demo(out, model, tokenizer, device, shards, samples, progress=display.update)
    typer.echo(f"shards:  {out / 'shards'} ({len(report.shards)})")
    typer.echo(f"phrases: {report.phrases_dir}")
    typer.echo(f"labels:  {report.labels_dir} ({report.rows} images, {report.boxes} boxes)")
    for name, path in report.views.items():
        typer.echo(f"{name}: {path}")
    if model.startswith("preset:"):
        typer.echo("(random weights: the pipeline ran end to end, but the boxes mean nothing; use --model glip-t)")
    if report.not_done:
        for line in report.not_done:
            typer.echo(line, err=True)
        raise typer.Exit(1)
