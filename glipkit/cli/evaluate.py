"""`glipkit eval coco|lvis|flickr30k|odinw`: score a GLIP (or a detections file) the way the paper measured."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer
from typing_extensions import Annotated

from glipkit.cli.app import app
from glipkit.cli.help import GlipkitGroup
from glipkit.cli.common import (INPUT, MODEL, OUTPUT, SPEED, DeviceOption, ModelOption, PrecisionOption,
                                ProgressDisplay, ProgressOption, TokenizerOption, check_options, fail, require_path,
                                user_errors)

eval_app = typer.Typer(help="Evaluate a GLIP on COCO, LVIS, Flickr30K or ODinW.", no_args_is_help=True,
                       cls=GlipkitGroup)
app.add_typer(eval_app, name="eval")

# Options shared by the benchmarks (ModelOption, TokenizerOption, DeviceOption, ProgressOption: cli/common.py).
BatchSizeOption = Annotated[int, typer.Option(
    "--batch-size", help="Images per forward pass. 1 reproduces the official numbers; larger is faster but "
    "approximate (padding).", rich_help_panel=SPEED)]
ChunkSizeOption = Annotated[Optional[int], typer.Option(
    "--chunk-size", help="Categories per prompt chunk; image features are shared by all chunks. Unset: all in one "
    "prompt if it fits 256 tokens, else 40 (GLIP's LVIS value).", rich_help_panel=MODEL)]
PromptFileOption = Annotated[Optional[Path], typer.Option(
    "--prompt-file", metavar="FILE", help="JSON/YAML file mapping class names to prompt text (prefix/name/suffix; "
    "only the name is positive).", rich_help_panel=INPUT)]
MaxImagesOption = Annotated[Optional[int], typer.Option(
    "--max-images", help="Evaluate only the first N images (by id; Flickr30K: with all their captions; ODinW: of "
    "each dataset).", rich_help_panel=INPUT)]
WorkersOption = Annotated[int, typer.Option("--workers", help="Processes reading and resizing images.",
                                            rich_help_panel=SPEED)]
OutOption = Annotated[Optional[Path], typer.Option(
    "--out", metavar="DIR", help="Directory for the records (detections.json or predictions.json; ODinW: one "
    "folder per dataset) and metrics.json.", rich_help_panel=OUTPUT)]
DetectionsOption = Annotated[Optional[Path], typer.Option(
    "--detections", metavar="FILE", rich_help_panel=INPUT,
    help="Score this detections json (COCO: xywh with +1; LVIS: xywh) instead of running a model.")]
def _load(model: str, tokenizer: Optional[str], device: str):
    from glipkit.engine.runtime import load_model, resolve_device

    return load_model(model, tokenizer, resolve_device(device))


def _meta(model: str, tokenizer: Optional[str], device: str) -> dict[str, Optional[str]]:
    """What metrics.json records about the model."""
    return {"model": model, "tokenizer": tokenizer, "device": device}


def _prompt_table(prompt_file: Optional[Path]):
    if prompt_file is None:
        return None
    from glipkit.text.prompt_file import load_prompt_file

    return load_prompt_file(prompt_file)


def _detector_run(run: Callable, score: Callable, ann: Path, images: Optional[Path], detections: Optional[Path],
                  settings: Callable, prompt_file: Optional[Path], out: Optional[Path], model: str,
                  tokenizer: Optional[str], device: str, progress: bool):
    """COCO and LVIS: `score` a detections file, or load the model and `run` it over the images with `settings()`."""
    with ProgressDisplay(progress) as display, user_errors(display):
        check_options(None if detections is not None else device, out=out)
        if detections is not None:
            return score(ann, detections, out)
        if images is None:
            fail("give --images DIR to run a model (with --model), or --detections FILE to score a detections file")
        run_settings = settings()
        table = _prompt_table(prompt_file)
        require_path(ann, "annotation file")
        require_path(images, "image directory", directory=True)
        glip = _load(model, tokenizer, device)
        return run(glip, ann, images, run_settings, table, out, display.update, _meta(model, tokenizer, device))


def _console():
    from rich.console import Console

    return Console()


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or value < 0 else f"{value:.{digits}f}"


_COCO_ROWS = (
    ("AP", "Average Precision", "0.50:0.95", "all", 100), ("AP50", "Average Precision", "0.50", "all", 100),
    ("AP75", "Average Precision", "0.75", "all", 100), ("APs", "Average Precision", "0.50:0.95", "small", 100),
    ("APm", "Average Precision", "0.50:0.95", "medium", 100), ("APl", "Average Precision", "0.50:0.95", "large", 100),
    ("AR1", "Average Recall", "0.50:0.95", "all", 1), ("AR10", "Average Recall", "0.50:0.95", "all", 10),
    ("AR100", "Average Recall", "0.50:0.95", "all", 100), ("ARs", "Average Recall", "0.50:0.95", "small", 100),
    ("ARm", "Average Recall", "0.50:0.95", "medium", 100), ("ARl", "Average Recall", "0.50:0.95", "large", 100),
)


def _print_coco(run, per_category: bool, title: str = "COCO box AP") -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"{title} ({run.result.num_images} images, {run.result.num_detections} detections)")
    for column in ("metric", "", "IoU", "area", "maxDets", "value"):
        table.add_column(column, justify="right" if column in ("maxDets", "value") else "left")
    for key, what, iou, area, max_dets in _COCO_ROWS:
        table.add_row(key, what, iou, area, str(max_dets), _fmt(run.metrics[key]))
    console.print(table)
    if per_category:
        _print_per_category(run.result.per_category_ap, run.result.category_names)


def _print_per_category(per_category_ap: dict[int, float], names: dict[int, str], groups: int = 3,
                        extra: dict[int, str] | None = None) -> None:
    from rich.table import Table

    items = list(per_category_ap.items())
    rows = (len(items) + groups - 1) // groups
    table = Table(title="AP per category (IoU 0.50:0.95, area all)")
    for _ in range(min(groups, len(items))):
        table.add_column("category")
        table.add_column("AP", justify="right")
    for r in range(rows):
        cells = []
        for g in range(min(groups, len(items))):
            i = g * rows + r
            if i < len(items):
                cat, ap = items[i]
                label = names.get(cat, str(cat)) + (f" ({extra[cat]})" if extra and extra.get(cat) else "")
                cells += [label, _fmt(ap)]
            else:
                cells += ["", ""]
        table.add_row(*cells)
    _console().print(table)


_LVIS_ROWS = {
    "AP": "AP IoU 0.50:0.95", "AP50": "AP IoU 0.50", "AP75": "AP IoU 0.75", "APs": "AP small", "APm": "AP medium",
    "APl": "AP large", "APr": "AP rare categories", "APc": "AP common categories", "APf": "AP frequent categories",
    "AR": "AR IoU 0.50:0.95", "ARs": "AR small", "ARm": "AR medium", "ARl": "AR large",
}


def _print_lvis(run, per_category: bool) -> None:
    from rich.table import Table

    result = run.result
    table = Table(title=f"LVIS fixed AP, top {result.topk_per_category} per category "
                        f"({result.num_images} images, {result.num_detections} detections)")
    table.add_column("metric")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, _LVIS_ROWS.get(name, ""), _fmt(value))
    _console().print(table)
    if per_category:
        _print_per_category(result.per_category_ap, result.category_names, extra=result.category_frequency)


def _print_outcome(warnings: list[str], files: dict[str, str], out: Optional[Path]) -> None:
    """The run's warnings (stderr), then the files it wrote."""
    for message in warnings:
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)
    for what, path in files.items():
        typer.echo(f"{what}: {path}")
    if not files and out is None:
        typer.echo("(pass --out DIR to save the detections and metrics.json)")


# ------------------------------------------------------------------------------------------------ commands


@eval_app.command("coco")
def coco(
    ann: Path = typer.Option(..., "--ann", rich_help_panel=INPUT,
                             help="COCO-format annotation json, e.g. instances_val2017.json."),
    images: Optional[Path] = typer.Option(None, "--images", rich_help_panel=INPUT,
                                          help="Image directory (`file_name` is relative to it)."),
    detections: DetectionsOption = None,
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    prompt_file: PromptFileOption = None,
    chunk_size: ChunkSizeOption = None,
    batch_size: BatchSizeOption = 1,
    max_images: MaxImagesOption = None,
    precision: PrecisionOption = "fp32",
    device: DeviceOption = "auto",
    workers: WorkersOption = 2,
    out: OutOption = None,
    per_category: bool = typer.Option(True, "--per-category/--no-per-category", rich_help_panel=OUTPUT,
                                      help="Print AP per category."),
    progress: ProgressOption = True,
) -> None:
    """COCO box AP of a GLIP (class-name prompt, batch 1) or of a detections json."""
    from glipkit.engine.evaluation.jobs import run_coco, score_coco_detections
    from glipkit.engine.evaluation.loop import RunSettings

    run = _detector_run(run_coco, score_coco_detections, ann, images, detections,
                        lambda: RunSettings(batch_size=batch_size, chunk_size=chunk_size, precision=precision,
                                            max_images=max_images, workers=workers),
                        prompt_file, out, model, tokenizer, device, progress)
    _print_coco(run, per_category)
    _print_outcome(run.warnings, run.files, out)


@eval_app.command("lvis")
def lvis(
    ann: Path = typer.Option(..., "--ann", rich_help_panel=INPUT,
                             help="LVIS annotation json, e.g. MDETR's lvis_v1_minival or lvis_v1_val."),
    images: Optional[Path] = typer.Option(None, "--images", rich_help_panel=INPUT,
                                          help="Image directory (`file_name`, or the tail of `coco_url`)."),
    detections: DetectionsOption = None,
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    prompt_file: PromptFileOption = None,
    chunk_size: ChunkSizeOption = 40,
    detections_per_image: int = typer.Option(300, "--detections-per-image", rich_help_panel=MODEL,
                                             help="Detections kept per image and prompt chunk."),
    batch_size: BatchSizeOption = 1,
    max_images: MaxImagesOption = None,
    precision: PrecisionOption = "fp32",
    device: DeviceOption = "auto",
    workers: WorkersOption = 2,
    out: OutOption = None,
    per_category: bool = typer.Option(False, "--per-category/--no-per-category", rich_help_panel=OUTPUT,
                                      help="Print AP per category."),
    progress: ProgressOption = True,
) -> None:
    """LVIS fixed AP (top 10,000 detections per category; APr/APc/APf) of a GLIP or a detections json."""
    from glipkit.engine.evaluation.jobs import run_lvis, score_lvis_detections
    from glipkit.engine.evaluation.loop import RunSettings

    run = _detector_run(run_lvis, score_lvis_detections, ann, images, detections,
                        lambda: RunSettings(batch_size=batch_size, chunk_size=chunk_size, precision=precision,
                                            detections_per_image=detections_per_image, max_images=max_images,
                                            workers=workers),
                        prompt_file, out, model, tokenizer, device, progress)
    _print_lvis(run, per_category)
    _print_outcome(run.warnings, run.files, out)


@eval_app.command("flickr30k")
def flickr30k(
    ann: Path = typer.Option(..., "--ann", rich_help_panel=INPUT,
                             help="MDETR's final_flickr_separateGT_{val,test}.json."),
    images: Path = typer.Option(..., "--images", rich_help_panel=INPUT, help="The flickr30k-images directory."),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    merged: bool = typer.Option(False, "--merged", rich_help_panel=INPUT,
                                help="Merge each phrase's boxes into one (the 'merged' GT)."),
    max_images: MaxImagesOption = None,
    precision: PrecisionOption = "fp32",
    device: DeviceOption = "auto",
    workers: WorkersOption = 2,
    out: OutOption = None,
    progress: ProgressOption = True,
) -> None:
    """Flickr30K Entities phrase grounding Recall@1/5/10 (any-box, IoU 0.5); the caption is the prompt."""
    from rich.table import Table

    from glipkit.engine.evaluation.jobs import FLICKR_DETECTIONS_PER_IMAGE, run_flickr
    from glipkit.engine.evaluation.loop import RunSettings

    with ProgressDisplay(progress) as display, user_errors(display):
        check_options(device, out=out)
        settings = RunSettings(precision=precision, max_images=max_images, workers=workers,
                               detections_per_image=FLICKR_DETECTIONS_PER_IMAGE)
        require_path(ann, "annotation file")
        require_path(images, "image directory", directory=True)
        glip = _load(model, tokenizer, device)
        run = run_flickr(glip, ann, images, settings, merged, out, display.update, _meta(model, tokenizer, device))
    result = run.result
    table = Table(title=f"Flickr30K phrase grounding ({result.num_phrases} phrases, {result.num_samples} captions)")
    for name in run.metrics:
        table.add_column(name, justify="right")
    table.add_row(*(f"{v:.4f}" for v in run.metrics.values()))
    _console().print(table)
    _print_outcome(run.warnings, run.files, out)


@eval_app.command("odinw")
def odinw(
    root: Path = typer.Option(..., "--root", rich_help_panel=INPUT,
                              help="Directory holding odinw/ (GLIP's DATASET folder)."),
    datasets: Optional[str] = typer.Option(None, "--datasets", metavar="A,B,...", rich_help_panel=INPUT,
                                           show_default="the 13 of ODinW-13", help="Comma-separated dataset names."),
    dataset_list: Optional[Path] = typer.Option(None, "--dataset-list", rich_help_panel=INPUT,
                                                help="JSON/YAML list of {name, ann_file, img_dir[, prompt_file]}."),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    prompt_file: PromptFileOption = None,
    caption_prompts: bool = typer.Option(True, "--caption-prompts/--no-caption-prompts", rich_help_panel=MODEL,
                                         help="Use GLIP's per-class prompt engineering where a dataset has it "
                                              "(a --prompt-file replaces it)."),
    chunk_size: ChunkSizeOption = None,
    batch_size: BatchSizeOption = 1,
    max_images: MaxImagesOption = None,
    precision: PrecisionOption = "fp32",
    device: DeviceOption = "auto",
    workers: WorkersOption = 2,
    out: OutOption = None,
    progress: ProgressOption = True,
) -> None:
    """ODinW: COCO AP on each dataset (GLIP's names and prompts) and the average."""
    from rich.table import Table

    from glipkit.engine.evaluation.jobs import odinw_datasets, resolve_odinw, run_odinw
    from glipkit.engine.evaluation.loop import RunSettings

    with ProgressDisplay(progress) as display, user_errors(display):
        check_options(device, out=out)
        names = [n.strip() for n in datasets.split(",") if n.strip()] if datasets else None
        chosen = odinw_datasets(names, dataset_list)
        settings = RunSettings(batch_size=batch_size, chunk_size=chunk_size, precision=precision,
                               max_images=max_images, workers=workers)
        table = _prompt_table(prompt_file)
        resolve_odinw(root, chosen)  # every missing path, before the model loads
        glip = _load(model, tokenizer, device)
        result = run_odinw(glip, root, chosen, settings, table, caption_prompts, out, display.update,
                           _meta(model, tokenizer, device))
    summary = Table(title=f"ODinW ({len(result.runs)} datasets)")
    for column in ("dataset", "AP", "AP50", "AP75", "images"):
        summary.add_column(column, justify="left" if column == "dataset" else "right")
    for name, run in result.runs.items():
        summary.add_row(name, _fmt(run.metrics["AP"]), _fmt(run.metrics["AP50"]), _fmt(run.metrics["AP75"]),
                        str(run.num_images))
    summary.add_row("average", _fmt(result.average_ap), "", "", "", style="bold")
    _console().print(summary)
    warnings = [f"{name}: {w}" for name, run in result.runs.items() for w in run.warnings]
    _print_outcome(warnings + result.warnings, result.files, out)
