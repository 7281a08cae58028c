"""`glipkit eval coco|lvis|flickr30k|odinw`: score a GLIP (or a detections file) the way the paper measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import fail, user_errors

eval_app = typer.Typer(help="Evaluate a GLIP on COCO, LVIS, Flickr30K or ODinW.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

_MODEL_HELP = "glip-t, glip-t-c, glip-t-a, glip-l, a .pth/.safetensors path, or preset:NAME (random weights)."
_BATCH_HELP = "Images per forward pass. 1 reproduces the official numbers; larger is faster but approximate (padding)."
_CHUNK_HELP = "Categories per prompt chunk (image features are shared by all chunks)."
_PROMPT_FILE_HELP = "JSON/YAML file mapping class names to prompt text (prefix/name/suffix; only the name is positive)."


def _settings(**values: Any):
    from glipkit.evaluation.runner import RunSettings

    return RunSettings(**{k: v for k, v in values.items() if v is not None})


def _require(path: Path, what: str, directory: bool = False) -> None:
    """Check an input path before the (slow) model load."""
    if not (path.is_dir() if directory else path.is_file()):
        raise FileNotFoundError(f"{what} not found: {path}")


def _load(model: str, tokenizer: Optional[str], device: str):
    from glipkit.engine.loading import load_glip

    return load_glip(model, tokenizer, device)


def _prompt_table(prompt_file: Optional[Path]):
    if prompt_file is None:
        return None
    from glipkit.text.prompt_file import load_prompt_file

    return load_prompt_file(prompt_file)


class _ProgressBar:
    """A rich progress bar with ETA on stderr; `update(done, total, label)` is the runner's callback."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("images"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "_ProgressBar":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, done: int, total: int, label: str = "evaluating") -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)

    def callback(self, label: str) -> Callable[[int, int], None]:
        return lambda done, total: self.update(done, total, label)


def _console():
    from rich.console import Console

    return Console()


def _print_warnings(messages: list[str]) -> None:
    for message in messages:
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


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


def _print_files(run_files: dict[str, str], out: Optional[Path]) -> None:
    if run_files:
        for what, path in run_files.items():
            typer.echo(f"{what}: {path}")
    elif out is None:
        typer.echo("(pass --out DIR to save the detections and metrics.json)")


# ------------------------------------------------------------------------------------------------ commands


@eval_app.command("coco")
def coco(
    ann: Path = typer.Option(..., "--ann", help="COCO-format annotation json, e.g. instances_val2017.json."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image directory (`file_name` is relative to it)."),
    detections: Optional[Path] = typer.Option(None, "--detections",
                                              help="Score this COCO detections json instead of running a model."),
    model: str = typer.Option("glip-t", help=_MODEL_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory (default: bert-base-uncased)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help=_PROMPT_FILE_HELP),
    chunk_size: Optional[int] = typer.Option(None, help=_CHUNK_HELP + " Default: all in one prompt if it fits "
                                                                      "256 tokens, else 40."),
    batch_size: int = typer.Option(1, help=_BATCH_HELP),
    max_images: Optional[int] = typer.Option(None, help="Evaluate only the first N images (by id)."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    workers: int = typer.Option(2, help="Processes reading and resizing images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for detections.json and metrics.json."),
    per_category: bool = typer.Option(True, "--per-category/--no-per-category", help="Print AP per category."),
) -> None:
    """COCO box AP of a GLIP (class-name prompt, batch 1) or of a detections json."""
    from glipkit.evaluation.benchmarks import run_coco, score_coco_detections

    with user_errors():
        if detections is not None:
            run = score_coco_detections(ann, detections, out)
        else:
            if images is None:
                fail("give --images DIR to run a model (with --model), or --detections FILE to score a detections file")
            settings = _settings(batch_size=batch_size, chunk_size=chunk_size, precision=precision,
                                 max_images=max_images, workers=workers)
            table = _prompt_table(prompt_file)
            _require(ann, "annotation file")
            _require(images, "image directory", directory=True)
            glip = _load(model, tokenizer, device)
            with _ProgressBar() as bar:
                run = run_coco(glip, ann, images, settings, table, out, bar.callback("COCO"),
                               {"model": model, "tokenizer": tokenizer, "device": device})
    _print_coco(run, per_category)
    _print_warnings(run.warnings)
    _print_files(run.files, out)


@eval_app.command("lvis")
def lvis(
    ann: Path = typer.Option(..., "--ann", help="LVIS annotation json, e.g. MDETR's lvis_v1_minival or lvis_v1_val."),
    images: Optional[Path] = typer.Option(None, "--images",
                                          help="Image directory (`file_name`, or the tail of `coco_url`)."),
    detections: Optional[Path] = typer.Option(None, "--detections",
                                              help="Score this detections json (xywh, no +1) instead of a model."),
    model: str = typer.Option("glip-t", help=_MODEL_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory (default: bert-base-uncased)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help=_PROMPT_FILE_HELP),
    chunk_size: int = typer.Option(40, help=_CHUNK_HELP + " GLIP uses 40."),
    detections_per_image: int = typer.Option(300, help="Detections kept per image and prompt chunk."),
    batch_size: int = typer.Option(1, help=_BATCH_HELP),
    max_images: Optional[int] = typer.Option(None, help="Evaluate only the first N images (by id)."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    workers: int = typer.Option(2, help="Processes reading and resizing images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for detections.json and metrics.json."),
    per_category: bool = typer.Option(False, "--per-category/--no-per-category", help="Print AP per category."),
) -> None:
    """LVIS fixed AP (top 10,000 detections per category; APr/APc/APf) of a GLIP or a detections json."""
    from glipkit.evaluation.benchmarks import lvis_settings, run_lvis, score_lvis_detections

    with user_errors():
        if detections is not None:
            run = score_lvis_detections(ann, detections, out)
        else:
            if images is None:
                fail("give --images DIR to run a model (with --model), or --detections FILE to score a detections file")
            settings = lvis_settings(batch_size=batch_size, chunk_size=chunk_size, precision=precision,
                                     detections_per_image=detections_per_image, max_images=max_images,
                                     workers=workers)
            table = _prompt_table(prompt_file)
            _require(ann, "annotation file")
            _require(images, "image directory", directory=True)
            glip = _load(model, tokenizer, device)
            with _ProgressBar() as bar:
                run = run_lvis(glip, ann, images, settings, table, out, bar.callback("LVIS"),
                               {"model": model, "tokenizer": tokenizer, "device": device})
    _print_lvis(run, per_category)
    _print_warnings(run.warnings)
    _print_files(run.files, out)


@eval_app.command("flickr30k")
def flickr30k(
    ann: Path = typer.Option(..., "--ann", help="MDETR's final_flickr_separateGT_{val,test}.json."),
    images: Path = typer.Option(..., "--images", help="The flickr30k-images directory."),
    model: str = typer.Option("glip-t", help=_MODEL_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory (default: bert-base-uncased)."),
    merged: bool = typer.Option(False, "--merged", help="Merge each phrase's boxes into one (the 'merged' GT)."),
    max_images: Optional[int] = typer.Option(None, help="Evaluate only the first N images (all their captions)."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    workers: int = typer.Option(2, help="Processes reading and resizing images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for predictions.json and metrics.json."),
) -> None:
    """Flickr30K Entities phrase grounding Recall@1/5/10 (any-box, IoU 0.5); the caption is the prompt."""
    from rich.table import Table

    from glipkit.evaluation.benchmarks import FLICKR_DETECTIONS_PER_IMAGE, run_flickr

    with user_errors():
        settings = _settings(precision=precision, max_images=max_images, workers=workers,
                             detections_per_image=FLICKR_DETECTIONS_PER_IMAGE)
        _require(ann, "annotation file")
        _require(images, "image directory", directory=True)
        glip = _load(model, tokenizer, device)
        with _ProgressBar() as bar:
            run = run_flickr(glip, ann, images, settings, merged, out, bar.callback("Flickr30K"),
                             {"model": model, "tokenizer": tokenizer, "device": device})
    result = run.result
    table = Table(title=f"Flickr30K phrase grounding ({result.num_phrases} phrases, {result.num_samples} captions)")
    for name in run.metrics:
        table.add_column(name, justify="right")
    table.add_row(*(f"{v:.4f}" for v in run.metrics.values()))
    _console().print(table)
    _print_warnings(run.warnings)
    _print_files(run.files, out)


@eval_app.command("odinw")
def odinw(
    root: Path = typer.Option(..., "--root", help="Directory holding odinw/ (GLIP's DATASET folder)."),
    datasets: Optional[str] = typer.Option(None, help="Comma-separated dataset names (default: the 13 of ODinW-13)."),
    dataset_list: Optional[Path] = typer.Option(None, "--dataset-list",
                                                help="JSON/YAML list of {name, ann_file, img_dir[, prompt_file]}."),
    model: str = typer.Option("glip-t", help=_MODEL_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer directory (default: bert-base-uncased)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file",
                                               help=_PROMPT_FILE_HELP + " Replaces the datasets' own prompts."),
    caption_prompts: bool = typer.Option(True, "--caption-prompts/--no-caption-prompts",
                                         help="Use GLIP's per-class prompt engineering where a dataset has it."),
    chunk_size: Optional[int] = typer.Option(None, help=_CHUNK_HELP),
    batch_size: int = typer.Option(1, help=_BATCH_HELP),
    max_images: Optional[int] = typer.Option(None, help="Evaluate only the first N images of each dataset."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto."),
    workers: int = typer.Option(2, help="Processes reading and resizing images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for per-dataset results and metrics.json."),
) -> None:
    """ODinW: COCO AP on each dataset (GLIP's names and prompts) and the average."""
    from rich.table import Table

    from glipkit.evaluation.benchmarks import resolve_odinw, run_odinw
    from glipkit.evaluation.odinw import ODINW_13, load_dataset_list, select_datasets

    with user_errors():
        available = load_dataset_list(dataset_list) if dataset_list is not None else ODINW_13
        names = [n.strip() for n in datasets.split(",") if n.strip()] if datasets else None
        chosen = select_datasets(names, available)
        settings = _settings(batch_size=batch_size, chunk_size=chunk_size, precision=precision,
                             max_images=max_images, workers=workers)
        table = _prompt_table(prompt_file)
        resolve_odinw(root, chosen)  # every missing path, before the model loads
        glip = _load(model, tokenizer, device)
        with _ProgressBar() as bar:
            result = run_odinw(glip, root, chosen, settings, table, caption_prompts, out,
                               lambda name, done, total: bar.update(done, total, name),
                               {"model": model, "tokenizer": tokenizer, "device": device})
    summary = Table(title=f"ODinW ({len(result.runs)} datasets)")
    for column in ("dataset", "AP", "AP50", "AP75", "images"):
        summary.add_column(column, justify="left" if column == "dataset" else "right")
    for name, run in result.runs.items():
        summary.add_row(name, _fmt(run.metrics["AP"]), _fmt(run.metrics["AP50"]), _fmt(run.metrics["AP75"]),
                        str(run.num_images))
    summary.add_row("average", _fmt(result.average_ap), "", "", "", style="bold")
    _console().print(summary)
    for name, run in result.runs.items():
        _print_warnings([f"{name}: {w}" for w in run.warnings])
    _print_warnings(result.warnings)
    files = dict(result.files)
    _print_files(files, out)
