"""`glipkit pseudo-label`: ground caption phrases (or a class list) in WebDataset shards with a GLIP teacher."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import (FILTERS, INPUT, MODEL, OUTPUT, SPEED, DeviceOption, Extractor, ExtractorOption,
                                LowercaseOption, MaxImagePixelsOption, MaxPhrasesOption, MinCharsOption, ModelOption,
                                NgramMaxNOption, OverwriteOption, PrecisionOption, ProgressDisplay, ProgressOption,
                                SpacyModelOption, StripDeterminersOption, TokenizerOption, check_options, user_errors)
from glipkit.text.class_list import CLASSES_HELP
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from glipkit.errors import GlipkitUsageError


class PromptMode(str, Enum):
    caption = "caption"
    classes = "classes"


class Preset(str, Enum):
    glip = "glip"
    owl_st = "owl-st"
    mm_gdino = "mm-gdino"
    none = "none"


@app.command("pseudo-label")
def pseudo_label_command(
    shards: Optional[str] = typer.Option(
        None, "--shards", metavar="SPEC",
        help="WebDataset tar shards (img2dataset layout: .jpg/.png/.webp + .txt/.json): a path, brace range "
        "'data/{00000..00099}.tar', glob, directory, text file listing shards, or a comma list. Quote globs.",
        rich_help_panel=INPUT,
    ),
    images: Optional[Path] = typer.Option(
        None, "--images", metavar="DIR", help="Instead of --shards: a folder of plain images, captions in same-stem "
        ".txt files (optional with --prompt-mode classes); packed once into OUT/_images/*.tar.",
        rich_help_panel=INPUT,
    ),
    out: str = typer.Option(..., "--out", metavar="DIR", help="Output directory: one table per shard and "
                             "_stats.json.", rich_help_panel=OUTPUT),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    phrases: Optional[Path] = typer.Option(
        None, "--phrases", metavar="DIR",
        help="extract-phrases output (<shard>.phrases.parquet), joined by key. Without it, phrases are extracted "
        "on the fly in the data workers (Phrases options).", rich_help_panel=INPUT,
    ),
    prompt_mode: PromptMode = typer.Option(
        PromptMode.caption, "--prompt-mode",
        help="caption: each image's caption is its prompt and its phrases are grounded; classes: every image is "
        "labelled against --classes (chunked when longer than 256 tokens).", rich_help_panel=INPUT,
    ),
    classes: Optional[str] = typer.Option(
        None, "--classes", metavar="'a. b'|FILE", help=f"For --prompt-mode classes. {CLASSES_HELP}",
        rich_help_panel=INPUT,
    ),
    prompt_file: Optional[Path] = typer.Option(
        None, "--prompt-file", metavar="FILE",
        help="Prompt engineering for classes (JSON/YAML: class -> prefix/name/suffix); only the name is positive.",
        rich_help_panel=INPUT,
    ),
    chunk_size: Optional[int] = typer.Option(
        None, "--chunk-size", min=1, show_default="all if they fit in 256 tokens, else 40",
        help="Classes per prompt in classes mode (GLIP's chunked evaluation).", rich_help_panel=INPUT,
    ),
    extractor: ExtractorOption = Extractor.spacy,
    spacy_model: SpacyModelOption = "en_core_web_sm",
    lowercase: LowercaseOption = False,
    strip_determiners: StripDeterminersOption = False,
    max_phrases: MaxPhrasesOption = None,
    min_chars: MinCharsOption = 1,
    ngram_max_n: NgramMaxNOption = 10,
    preset: Preset = typer.Option(
        Preset.glip, "--preset",
        help="Filter preset: glip (boxes >= 0.5), owl-st (boxes >= 0.1, images need one box >= 0.3), mm-gdino "
        "(boxes >= 0.3), none (all post-processed boxes). The options below override it.", rich_help_panel=FILTERS,
    ),
    box_threshold: Optional[float] = typer.Option(None, "--box-threshold", min=0.0, max=1.0, show_default="preset's",
                                                  help="Keep boxes with at least this score.",
                                                  rich_help_panel=FILTERS),
    image_threshold: Optional[float] = typer.Option(
        None, "--image-threshold", min=0.0, max=1.0, show_default="preset's",
        help="Images without a box this good get an empty box list and the flag below_image_threshold.",
        rich_help_panel=FILTERS,
    ),
    nms: Optional[float] = typer.Option(None, "--nms", min=0.01, max=1.0, show_default="0.6, GLIP's",
                                        help="IoU of GLIP's per-phrase NMS.", rich_help_panel=FILTERS),
    max_boxes: Optional[int] = typer.Option(None, "--max-boxes", min=0, show_default="100; 0 = no limit",
                                            help="Boxes per image.", rich_help_panel=FILTERS),
    min_boxes: Optional[int] = typer.Option(
        None, "--min-boxes", min=0, show_default="preset's",
        help="Images with fewer boxes get an empty list and the flag too_few_boxes (never dropped).",
        rich_help_panel=FILTERS,
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, show_default="8 on GPU, 1 on CPU",
        help="Images per model pass. 1 reproduces the official outputs exactly; larger batches pad images to a "
        "common size, which changes GLIP's outputs slightly (GLIP_SPEC.md §1.1.7).", rich_help_panel=SPEED,
    ),
    precision: PrecisionOption = "auto",
    tf32: bool = typer.Option(True, "--tf32/--no-tf32", help="Allow TF32 matmuls/convs on GPU.",
                              rich_help_panel=MODEL),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", metavar="SHORT[,MAX]", show_default="the model's: 800,1333",
        help="Resize: short side SHORT, long side at most MAX.", rich_help_panel=MODEL,
    ),
    bucket_window: int = typer.Option(8, "--bucket-window", min=1, rich_help_panel=SPEED,
                                      help="Batches per aspect-ratio sorting window; 1 = no bucketing."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, show_default="cores per GPU - 1, at most 8",
                                          help="DataLoader worker processes per rank; 0 = in the main process.",
                                          rich_help_panel=SPEED),
    max_image_pixels: MaxImagePixelsOption = DEFAULT_MAX_IMAGE_PIXELS,
    device: DeviceOption = "auto",
    overwrite: OverwriteOption = False,
    progress: ProgressOption = True,
) -> None:
    """Pseudo-label WebDataset shards with a GLIP teacher.

    Writes OUT/<shard>.labels.parquet per shard, atomically: key, caption, phrases, shard, width, height, flags, and
    boxes (absolute xyxy pixels, score, phrase index). Bad samples are counted in OUT/_stats.json, never fatal.

    Several GPUs or nodes: torchrun --nproc-per-node G -m glipkit pseudo-label ... (each rank its own shards).

    A re-run skips finished shards. Exit code 1 if a shard failed, 2 for errors you can fix.
    """
    from glipkit.engine.labelling.pseudo_label import pseudo_label

    interrupted = "Interrupted: finished shards are kept; run the same command again to resume."
    with ProgressDisplay(enabled=progress and int(os.environ.get("RANK", "0")) == 0) as display, \
            user_errors(display, interrupted):
        check_options(device, out=out)
        settings = _settings(
            prompt_mode=prompt_mode, phrases=phrases, classes=classes, prompt_file=prompt_file,
            chunk_size=chunk_size, extractor=extractor, spacy_model=spacy_model, lowercase=lowercase,
            strip_determiners=strip_determiners, max_phrases=max_phrases, min_chars=min_chars,
            ngram_max_n=ngram_max_n, preset=preset, box_threshold=box_threshold, image_threshold=image_threshold,
            nms=nms, max_boxes=max_boxes, min_boxes=min_boxes, batch_size=batch_size, precision=precision,
            tf32=tf32, image_size=image_size, bucket_window=bucket_window, workers=workers,
            max_image_pixels=max_image_pixels, overwrite=overwrite,
        )
        if (shards is None) == (images is None):
            raise GlipkitUsageError("give exactly one of --shards or --images")
        if images is not None:
            from glipkit.data.image_folder import folder_shards

            shards = [str(p) for p in folder_shards(images, out)]
        report = pseudo_label(shards, out, model, tokenizer, device, settings, progress=display.update)
    _print_report(report)
    if report.not_done:
        raise typer.Exit(1)


def _settings(
    *, prompt_mode: PromptMode, phrases: Optional[Path], classes: Optional[str], prompt_file: Optional[Path],
    chunk_size: Optional[int], extractor: Extractor, spacy_model: str, lowercase: bool, strip_determiners: bool,
    max_phrases: Optional[int], min_chars: int, ngram_max_n: int, preset: Preset, box_threshold: Optional[float],
    image_threshold: Optional[float], nms: Optional[float], max_boxes: Optional[int], min_boxes: Optional[int],
    batch_size: Optional[int], precision: str, tf32: bool, image_size: Optional[str], bucket_window: int,
    workers: Optional[int], max_image_pixels: int, overwrite: bool,
):
    """PseudoLabelSettings from the command's options."""
    from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings
    from glipkit.engine.labelling.filters import filter_settings
    from glipkit.engine.labelling.pseudo_label import PseudoLabelSettings, parse_image_size
    from glipkit.errors import GlipkitUsageError
    from glipkit.text.class_list import parse_class_list
    from glipkit.text.phrases import PhraseOptions

    names = prompt_names = prefixes = suffixes = None
    if classes is not None:
        names = parse_class_list(classes)
        if prompt_file is not None:
            from glipkit.text.prompt_file import load_prompt_file, prompt_parts

            prompt_names, prefixes, suffixes = prompt_parts(load_prompt_file(prompt_file).for_classes(names))
    elif prompt_file is not None:
        raise GlipkitUsageError("--prompt-file needs --classes")
    extraction = ExtractPhrasesSettings(
        extractor=extractor.value, spacy_model=spacy_model,
        options=PhraseOptions(lowercase=lowercase, strip_determiners=strip_determiners, max_phrases=max_phrases,
                              min_chars=min_chars, ngram_max_n=ngram_max_n),
    )
    filters = filter_settings(preset.value, box_threshold=box_threshold, image_threshold=image_threshold, nms=nms,
                              max_boxes=max_boxes, min_boxes=min_boxes)
    return PseudoLabelSettings(
        prompt_mode=prompt_mode.value, phrases_dir=phrases, extraction=extraction, classes=names,
        class_prompt_names=prompt_names, class_prefixes=prefixes, class_suffixes=suffixes, chunk_size=chunk_size,
        preset=preset.value, filters=filters, batch_size=batch_size, bucket_window=bucket_window, workers=workers,
        image_size=parse_image_size(image_size) if image_size else None, max_image_pixels=max_image_pixels,
        precision=precision, allow_tf32=tf32, overwrite=overwrite,
    )


def _print_report(report) -> None:
    from glipkit.cli.common import print_not_done
    from glipkit.engine.shard_job import DONE, EXISTS, FAILED, PARTIAL, UNREADABLE

    prefix = f"[rank {report.rank}/{report.world_size}] " if report.world_size > 1 else ""
    typer.echo(
        f"{prefix}{len(report.results)} shards: {report.count(DONE)} labelled, {report.count(EXISTS)} already done, "
        f"{report.count(PARTIAL)} damaged (readable part written), {report.count(UNREADABLE)} unreadable, "
        f"{report.count(FAILED)} failed. {report.read} images read, {report.written} rows, "
        f"{report.total('boxes')} boxes; {report.read_per_second:.1f} images/s."
    )
    if report.stats is not None:
        totals = report.stats.get("totals", {})
        typer.echo(f"All ranks: {totals.get('written', 0)} rows, {totals.get('failed', 0)} samples failed "
                   f"{totals.get('failed_by_reason', {})}. Stats: {report.stats_path}")
    print_not_done(report, "shards", prefix)
