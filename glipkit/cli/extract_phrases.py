"""`glipkit extract-phrases`: noun phrases with exact character spans from captions of shards or caption files."""

from __future__ import annotations

from typing import Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import (INPUT, OUTPUT, PHRASES, SPEED, Extractor, ExtractorOption, LowercaseOption,
                                MaxPhrasesOption, MinCharsOption, NgramMaxNOption, OverwriteOption, ProgressDisplay,
                                ProgressOption, SpacyModelOption, StripDeterminersOption, check_options, user_errors)


@app.command("extract-phrases")
def extract_phrases_command(
    shards: Optional[str] = typer.Option(
        None,
        "--shards",
        metavar="SPEC",
        help="WebDataset tar shards (img2dataset layout): a path, brace range 'data/{00000..00099}.tar', glob, "
        "directory, text file listing shards, or a comma list. Captions come from .txt (else the 'caption' "
        "of .json); images are not read. Quote globs.",
        rich_help_panel=INPUT,
    ),
    captions: Optional[str] = typer.Option(
        None,
        "--captions",
        metavar="FILE",
        help="Caption files instead of shards: .jsonl with key/caption, .parquet with key/caption columns, or "
        ".txt with one caption a line (comma list, glob or directory allowed).",
        rich_help_panel=INPUT,
    ),
    out: str = typer.Option(..., "--out", metavar="DIR", rich_help_panel=OUTPUT,
                             help="Output directory: one <shard>.phrases.parquet per input and _stats.json."),
    extractor: ExtractorOption = Extractor.spacy,
    spacy_model: SpacyModelOption = "en_core_web_sm",
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        min=1,
        show_default="CPU cores",
        help="Processes, each loading spaCy once; shards are spread over them.",
        rich_help_panel=SPEED,
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Captions per nlp.pipe batch.",
                                   rich_help_panel=SPEED),
    lowercase: LowercaseOption = False,
    strip_determiners: StripDeterminersOption = False,
    max_phrases: MaxPhrasesOption = None,
    min_chars: MinCharsOption = 1,
    ngram_max_n: NgramMaxNOption = 10,
    overwrite: OverwriteOption = False,
    download: bool = typer.Option(
        True, "--download/--no-download", help="Allow spaCy's downloader when the model is not installed.",
        rich_help_panel=PHRASES,
    ),
    progress: ProgressOption = True,
) -> None:
    """Extract noun phrases with exact character spans (caption\\[start:end] == text) from captions.

    Writes OUT/<shard>.phrases.parquet (key, caption, phrases) per input, atomically, and OUT/_stats.json.

    Bad samples and damaged shards are counted in _stats.json, never fatal; a rerun skips finished shards.

    Exit code 1 if a shard failed, 2 for errors you can fix (bad input spec, missing spaCy model).
    """
    from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings, resolve_inputs, run_extract_phrases
    from glipkit.engine.shard_job import DONE, EXISTS, FAILED, PARTIAL, UNREADABLE
    from glipkit.cli.common import print_not_done
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
    interrupted = "Interrupted: finished shards are kept; run the same command again to resume."
    with ProgressDisplay(enabled=progress) as display, user_errors(display, interrupted):
        check_options(out=out)
        inputs = resolve_inputs(shards, captions)
        report = run_extract_phrases(inputs, out, settings, workers=workers, progress=display.update)

    typer.echo(
        f"{len(report.results)} inputs: {report.count(DONE)} written, {report.count(EXISTS)} already done, "
        f"{report.count(PARTIAL)} damaged (readable part written), {report.count(UNREADABLE)} unreadable, "
        f"{report.count(FAILED)} failed. Captions: {report.written} written, "
        f"{report.skipped} skipped; {report.read_per_second:.0f} captions/s. "
        f"Stats: {report.stats_path}"
    )
    print_not_done(report, "inputs")
    if report.not_done:
        raise typer.Exit(1)
