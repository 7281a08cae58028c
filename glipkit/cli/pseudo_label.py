"""`glipkit pseudo-label`: ground caption phrases (or a class list) in WebDataset shards with a GLIP teacher."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import fail


class PromptMode(str, Enum):
    caption = "caption"
    classes = "classes"


class Preset(str, Enum):
    glip = "glip"
    owl_st = "owl-st"
    mm_gdino = "mm-gdino"
    none = "none"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Extractor(str, Enum):
    spacy = "spacy"
    glip_regex = "glip-regex"
    ngrams = "ngrams"


@app.command("pseudo-label")
def pseudo_label_command(
    shards: str = typer.Option(
        ..., "--shards", metavar="SPEC",
        help="WebDataset tar shards (img2dataset layout: .jpg/.png/.webp + .txt/.json): a path, brace range "
        "'data/{00000..00099}.tar', glob, directory, text file listing shards, or a comma list.",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory: <shard>.parquet per shard and _stats.json."),
    model: str = typer.Option(
        "glip-t", "--model",
        help="glip-t, glip-t-a, glip-t-c, glip-l (official weights from the Hub), a local official .pth, a glipkit "
        ".safetensors, or preset:NAME (random weights, for smoke tests).",
    ),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", metavar="DIR",
                                            help="Tokenizer directory (default: bert-base-uncased from the Hub)."),
    phrases: Optional[Path] = typer.Option(
        None, "--phrases", metavar="DIR",
        help="extract-phrases output (<shard>.phrases.parquet), joined by key. Without it, phrases are extracted "
        "on the fly in the data workers with the options below.",
    ),
    prompt_mode: PromptMode = typer.Option(
        PromptMode.caption, "--prompt-mode",
        help="caption: each image's caption is its prompt and its phrases are grounded; classes: every image is "
        "labelled against --classes (chunked when longer than 256 tokens).",
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", metavar="'a. b. c'|FILE",
        help="Vocabulary for --prompt-mode classes: inline 'person. dog. traffic light', or a file (one class a "
        "line, a JSON list, or COCO json categories).",
    ),
    prompt_file: Optional[Path] = typer.Option(
        None, "--prompt-file", metavar="FILE",
        help="Prompt engineering for classes (JSON/YAML: class -> prefix/name/suffix); only the name is positive.",
    ),
    chunk_size: Optional[int] = typer.Option(
        None, "--chunk-size", min=1, show_default="all if they fit in 256 tokens, else 40",
        help="Classes per prompt in classes mode (GLIP's chunked evaluation).",
    ),
    extractor: Extractor = typer.Option(Extractor.spacy, "--extractor",
                                        help="On-the-fly phrase extractor (as extract-phrases)."),
    spacy_model: str = typer.Option("en_core_web_sm", "--spacy-model", metavar="NAME",
                                    help="spaCy pipeline for the spacy / glip-regex extractors."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Extraction: lowercase phrases and the stored caption."),
    strip_determiners: bool = typer.Option(False, "--strip-determiners",
                                           help="Extraction: drop leading determiners ('the red car' -> 'red car')."),
    max_phrases: Optional[int] = typer.Option(None, "--max-phrases", min=1,
                                              show_default="300 for ngrams, else all",
                                              help="Extraction: keep at most N phrases per caption."),
    min_chars: int = typer.Option(1, "--min-chars", min=1, help="Extraction: drop shorter phrases."),
    ngram_max_n: int = typer.Option(10, "--ngram-max-n", min=1, help="Extraction: longest n-gram (ngrams)."),
    preset: Preset = typer.Option(
        Preset.glip, "--preset",
        help="Filter preset: glip (boxes >= 0.5), owl-st (boxes >= 0.1, images need one box >= 0.3), mm-gdino "
        "(boxes >= 0.3), none (all post-processed boxes). The knobs below override it.",
    ),
    box_threshold: Optional[float] = typer.Option(None, "--box-threshold", min=0.0, max=1.0,
                                                  help="Keep boxes with at least this score."),
    image_threshold: Optional[float] = typer.Option(
        None, "--image-threshold", min=0.0, max=1.0,
        help="Images without a box this good get an empty box list and the flag below_image_threshold.",
    ),
    nms: Optional[float] = typer.Option(None, "--nms", min=0.01, max=1.0,
                                        help="IoU of GLIP's per-phrase NMS (official 0.6)."),
    max_boxes: Optional[int] = typer.Option(None, "--max-boxes", min=0, help="Boxes per image (0: no limit; 100)."),
    min_boxes: Optional[int] = typer.Option(
        None, "--min-boxes", min=0,
        help="Images with fewer boxes get an empty list and the flag too_few_boxes (never dropped).",
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, show_default="8 on GPU, 1 on CPU",
        help="Images per model pass. 1 reproduces the official outputs exactly; larger batches pad images to a "
        "common size, which changes GLIP's outputs slightly (GLIP_SPEC.md §1.1.7).",
    ),
    precision: Precision = typer.Option(Precision.auto, "--precision",
                                        help="auto: bf16 on GPU, fp32 on CPU. Deformable convs stay fp32."),
    tf32: bool = typer.Option(True, "--tf32/--no-tf32", help="Allow TF32 matmuls/convs on GPU."),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", metavar="SHORT[,MAX]", show_default="the model's: 800,1333",
        help="Resize: short side SHORT, long side at most MAX.",
    ),
    bucket_window: int = typer.Option(8, "--bucket-window", min=1,
                                      help="Batches per aspect-ratio sorting window (1: no bucketing)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, show_default="cores per GPU - 1, at most 8",
                                          help="DataLoader worker processes per rank (0: in the main process)."),
    max_image_pixels: int = typer.Option(
        100_000_000, "--max-image-pixels", min=0,
        help="Refuse images with more pixels (decompression bombs); reported per sample. 0: no limit.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (this rank's GPU if any, else cpu), cpu, cuda, cuda:1."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo shards whose table exists (default: skip them)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr (rank 0)."),
) -> None:
    """Pseudo-label WebDataset shards with a GLIP teacher.

    Writes OUT/<shard>.parquet per shard, atomically: key, caption, phrases, shard, width, height, flags, and
    boxes (absolute xyxy pixels, score, phrase index). Bad samples are counted in OUT/_stats.json, never fatal.

    Several GPUs or nodes: torchrun --nproc-per-node G -m glipkit pseudo-label ... (each rank its own shards).

    A re-run skips finished shards. Exit code 1 if a shard failed, 2 for errors you can fix.
    """
    with _usage_errors():
        settings = _settings(**locals())
    display = _ProgressDisplay(enabled=progress and int(os.environ.get("RANK", "0")) == 0)
    from glipkit.engine.pseudo_label import FAILED, pseudo_label
    from glipkit.errors import GlipkitUsageError

    try:
        with _usage_errors(display):
            report = pseudo_label(shards, out, model, tokenizer, device, settings, progress=display.update)
    except KeyboardInterrupt:
        display.stop()
        typer.echo("Interrupted: finished shards are kept; run the same command again to resume.", err=True)
        raise typer.Exit(130) from None
    except GlipkitUsageError as e:  # pragma: no cover - converted by _usage_errors
        fail(str(e))
    display.stop()
    _print_report(report)
    if any(r.status == FAILED for r in report.results):
        raise typer.Exit(1)


def _settings(**options):
    """PseudoLabelSettings from the command's options."""
    from glipkit.engine.extract_phrases import ExtractPhrasesSettings
    from glipkit.engine.filters import filter_settings
    from glipkit.engine.pseudo_label import PseudoLabelSettings, parse_class_list
    from glipkit.text.phrases import PhraseOptions

    o = options
    names = prompt_names = prefixes = suffixes = None
    if o["classes"] is not None:
        names = parse_class_list(o["classes"])
        if o["prompt_file"] is not None:
            from glipkit.text.prompt_file import load_prompt_file, prompt_parts

            prompt_names, prefixes, suffixes = prompt_parts(load_prompt_file(o["prompt_file"]).for_classes(names))
    elif o["prompt_file"] is not None:
        fail("--prompt-file needs --classes")
    image_size = None
    if o["image_size"]:
        try:
            parts = [int(p) for p in o["image_size"].split(",")]
        except ValueError:
            fail(f"--image-size {o['image_size']!r}: expected SHORT or SHORT,MAX (integers)")
        image_size = (parts[0], parts[1] if len(parts) > 1 else max(parts[0], round(parts[0] * 1333 / 800)))
        if len(parts) > 2 or min(image_size) < 32 or image_size[1] < image_size[0]:
            fail(f"--image-size {o['image_size']!r}: need 32 <= SHORT <= MAX")
    extraction = ExtractPhrasesSettings(
        extractor=o["extractor"].value, spacy_model=o["spacy_model"],
        options=PhraseOptions(lowercase=o["lowercase"], strip_determiners=o["strip_determiners"],
                              max_phrases=o["max_phrases"], min_chars=o["min_chars"], ngram_max_n=o["ngram_max_n"]),
    )
    filters = filter_settings(o["preset"].value, box_threshold=o["box_threshold"],
                              image_threshold=o["image_threshold"], nms=o["nms"], max_boxes=o["max_boxes"],
                              min_boxes=o["min_boxes"])
    return PseudoLabelSettings(
        prompt_mode=o["prompt_mode"].value, phrases_dir=o["phrases"], extraction=extraction, classes=names,
        class_prompt_names=prompt_names, class_prefixes=prefixes, class_suffixes=suffixes,
        chunk_size=o["chunk_size"], preset=o["preset"].value, filters=filters, batch_size=o["batch_size"],
        bucket_window=o["bucket_window"], workers=o["workers"], image_size=image_size,
        max_image_pixels=o["max_image_pixels"], precision=o["precision"].value, allow_tf32=o["tf32"],
        overwrite=o["overwrite"],
    )


class _usage_errors:
    """Errors the user can fix become one line and exit code 2 (stopping the progress bar first)."""

    def __init__(self, display: "_ProgressDisplay | None" = None):
        self.display = display

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        from glipkit.errors import GlipkitUsageError
        from glipkit.model.hub import WeightsUnavailableError
        from glipkit.model.weights import CheckpointError
        from glipkit.text.prompt_file import PromptFileError

        if issubclass(exc_type, (GlipkitUsageError, WeightsUnavailableError, CheckpointError, PromptFileError,
                                 FileNotFoundError, ValueError)):
            if self.display is not None:
                self.display.stop()
            message = str(exc).splitlines()[0] if str(exc) else exc_type.__name__
            fail(message)
        return False


def _print_report(report) -> None:
    from glipkit.engine.pseudo_label import EXISTS, FAILED, PARTIAL, UNREADABLE

    prefix = f"[rank {report.rank}/{report.world_size}] " if report.world_size > 1 else ""
    typer.echo(
        f"{prefix}{len(report.results)} shards: {report.count('done')} labelled, {report.count(EXISTS)} already done, "
        f"{report.count(PARTIAL)} damaged (readable part written), {report.count(UNREADABLE)} unreadable, "
        f"{report.count(FAILED)} failed. {report.images_read} images read, {report.rows_written} rows, "
        f"{report.boxes} boxes; {report.images_per_second:.1f} images/s."
    )
    if report.stats is not None:
        totals = report.stats.get("totals", {})
        typer.echo(f"All ranks: {totals.get('written', 0)} rows, {totals.get('failed', 0)} samples failed "
                   f"{totals.get('failed_by_reason', {})}. Stats: {report.out_dir / '_stats.json'}")
    for result in report.results:
        if result.status in (PARTIAL, UNREADABLE, FAILED):
            typer.echo(f"{prefix}{result.status}: {result.shard}: {result.error}", err=True)


class _ProgressDisplay:
    """A rich progress bar: shards done, images, images/s, boxes/s, ETA (by shards)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None
        self._task = None

    def update(self, event) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._progress = Progress(
                TextColumn("pseudo-label"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                TextColumn("{task.fields[images]} images {task.fields[rate]} img/s {task.fields[boxes]} boxes/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("shards", total=event.shards_total, images="0", rate="0",
                                                 boxes="0")
        seconds = max(event.elapsed_s, 1e-9)
        self._progress.update(self._task, completed=event.shards_done, images=f"{event.images:,}",
                              rate=f"{event.images / seconds:,.1f}", boxes=f"{event.boxes / seconds:,.0f}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
