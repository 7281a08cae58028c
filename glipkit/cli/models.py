"""`glipkit models list|download|convert|average`: the official checkpoints and weight averaging."""

from __future__ import annotations

from pathlib import Path

import typer

from glipkit.cli.app import app
from glipkit.cli.help import GlipkitGroup
from glipkit.cli.common import require_path, user_errors

models_app = typer.Typer(help="List, download and convert GLIP checkpoints.", no_args_is_help=True, cls=GlipkitGroup)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_models() -> None:
    """Show the named official models: file, size, and whether it is already downloaded."""
    from rich.console import Console
    from rich.table import Table

    from glipkit.model.hub import HUB_REPO, NAMED_MODELS, cached_path

    table = Table(title=f"GLIP checkpoints (Hugging Face: {HUB_REPO})")
    for column in ("name", "file", "size", "cached", "description"):
        table.add_column(column)
    for model in NAMED_MODELS.values():
        local = cached_path(model)
        table.add_row(model.name, model.filename, f"{model.size_gb:.2f} GB", str(local) if local else "no",
                      model.description)
    Console().print(table)


@models_app.command("download")
def download(name: str = typer.Argument(..., help="glip-t, glip-t-c, glip-t-a or glip-l.")) -> None:
    """Download a named model into the Hugging Face cache and print its path."""
    from glipkit.model.hub import download_named_model

    with user_errors():
        typer.echo(str(download_named_model(name)))


@models_app.command("convert")
def convert(
    source: Path = typer.Argument(..., help="An official GLIP .pth (or any checkpoint glipkit reads)."),
    output: Path = typer.Argument(..., help="Where to write the glipkit .safetensors."),
) -> None:
    """Convert an official checkpoint to a glipkit `.safetensors` (weights only, config in the metadata)."""
    with user_errors():
        from glipkit.engine.checks import check_output_file

        require_path(source, "checkpoint")  # before importing torch (seconds)
        check_output_file(output, "OUTPUT")
        from glipkit.model.glip import GLIP

        model = GLIP.from_pretrained(source, load_tokenizer_now=False)
        model.save_pretrained(output, {"source": source.name})
    typer.echo(f"wrote {output}")


@models_app.command("average")
def average(
    first: Path = typer.Argument(..., help="A glipkit .safetensors (its config is kept)."),
    second: Path = typer.Argument(..., help="A .safetensors of the same architecture."),
    out: Path = typer.Option(..., "--out", help="Where to write the averaged .safetensors."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Weight of FIRST (1 - alpha: SECOND)."),
) -> None:
    """Weight-space ensembling (OWL-ST): write alpha * FIRST + (1 - alpha) * SECOND."""
    with user_errors():
        from glipkit.engine.checks import check_output_file

        require_path(first, "checkpoint")
        require_path(second, "checkpoint")
        check_output_file(out, "--out")
        from glipkit.engine.average import average_checkpoints

        average_checkpoints(first, second, out, alpha)
    typer.echo(f"wrote {out}")
