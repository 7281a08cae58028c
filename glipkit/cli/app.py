"""The `glipkit` command: one Typer app; each command lives in its own module under cli/."""

from __future__ import annotations

import typer

from glipkit import __version__
from glipkit.cli.help import GlipkitGroup, use_glipkit_help

app = typer.Typer(
    name="glipkit",
    cls=GlipkitGroup,
    help="Pseudo-label image-text data with a GLIP teacher and train GLIP students on the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"glipkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """glipkit: grounded pseudo-labels from image-caption shards with GLIP."""


def _register_commands() -> None:
    # Each command module adds itself to `app`; importing them here keeps app.py free of logic.
    from glipkit.cli import commands  # noqa: F401

    use_glipkit_help(app)


def main() -> None:
    _register_commands()
    app()
