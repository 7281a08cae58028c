"""CLI plumbing shared by commands: turning errors a user can fix into one line and exit code 2."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer

from glipkit.errors import GlipkitUsageError

# Errors of the model package that a user can fix. Looked up only if the module is already imported, so that
# commands which never load a model do not pay for importing torch.
_MODEL_USER_ERRORS = (("glipkit.model.hub", "WeightsUnavailableError"), ("glipkit.model.weights", "CheckpointError"))


def fail(message: str) -> None:
    """Print one line to stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def is_user_error(error: BaseException) -> bool:
    """True for errors whose message tells the user what to fix (bad options, missing files or weights)."""
    if isinstance(error, (GlipkitUsageError, FileNotFoundError, ValueError)):
        return True
    for module_name, class_name in _MODEL_USER_ERRORS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None and isinstance(error, cls):
            return True
    return False


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix become one line (all of the message, joined) and exit code 2."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:
        if not is_user_error(error):
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        fail(message or type(error).__name__)
