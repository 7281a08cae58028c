"""CLI plumbing shared by commands: turning known user errors into one line and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer


def fail(message: str) -> None:
    """Print one line to stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix (missing weights, bad files, bad options) become one line and exit code 2."""
    from glipkit.model.hub import WeightsUnavailableError
    from glipkit.model.weights import CheckpointError

    try:
        yield
    except (WeightsUnavailableError, CheckpointError, FileNotFoundError, ValueError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
