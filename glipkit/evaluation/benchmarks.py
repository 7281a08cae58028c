"""The benchmarks as `glipkit eval` runs them: model over a set, records in the benchmark's format, scores, files.

* COCO (and any COCO-format set): GLIP's class-name prompt (§4.3), 100 detections per image, COCO xywh with the
  +1 width (§7.4), box AP by pycocotools.
* LVIS: 40 classes per prompt chunk, 300 detections per image and chunk, xywh without +1, fixed AP (top 10,000
  per category over the dataset, §7.5) by `evaluation.lvis`.
* Flickr30K: the caption is the prompt and each phrase's spans its positive map, Recall@1/5/10 any-box (§7.6).
* ODinW: a list of COCO-format sets with GLIP's names and caption prompts, AP per set and the average.

Every run writes, when given an output directory, its records (detections.json / predictions.json) and a
metrics.json that holds the numbers, the settings, the prompts and every warning. If the run stops early
(Ctrl-C, an error), the records made so far are written to a `.partial.json` file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from glipkit import __version__
from glipkit.evaluation.coco import detections_to_coco, evaluate_coco
from glipkit.evaluation.flickr import evaluate_flickr_recall, group_by_phrase, load_flickr_grounding
from glipkit.evaluation.lvis import DEFAULT_TOPK_PER_CATEGORY, TopKPerCategory, evaluate_lvis_fixed_ap
from glipkit.evaluation.odinw import OdinwDataset, average_ap, resolve_datasets
from glipkit.evaluation.runner import (
    Caption,
    CaptionDetections,
    ClassVocabulary,
    ImageDetections,
    ImageRecord,
    LoopStats,
    RunSettings,
    class_vocabulary,
    detect_images,
    ground_captions,
    image_records,
)
from glipkit.text.prompt_file import PromptFileError, PromptTable

PathLike = str | Path
Progress = Callable[[int, int], None]

# What each benchmark keeps per image and prompt chunk (§7.1, §7.5, §7.6).
COCO_DETECTIONS_PER_IMAGE = 100
LVIS_DETECTIONS_PER_IMAGE = 300
LVIS_CHUNK_SIZE = 40
FLICKR_DETECTIONS_PER_IMAGE = 100
FLICKR_TOPK = (1, 5, 10)


@dataclass
class BenchmarkRun:
    """The outcome of one benchmark run: headline numbers, the metric object, and what was written where."""

    benchmark: str
    metrics: dict[str, float]
    result: Any  # CocoEvalResult | LvisEvalResult | FlickrRecallResult
    num_images: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)  # the metrics.json content


@dataclass
class OdinwRun:
    """Per-dataset runs and the average AP over the datasets whose AP is defined."""

    runs: dict[str, BenchmarkRun]
    average_ap: float
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ files


def read_annotations(path: PathLike, what: str = "annotation file") -> dict[str, Any]:
    """A COCO-style json (needs `images` and `categories`), read once so that runs and scoring share it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{path}: not a COCO-style {what} (needs 'images' and 'categories')")
    return data


def _write_json(path: Path, payload: Any) -> Path:
    """Write json atomically: a temporary name, then a rename, so a file that exists is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=_json_default)
    os.replace(tmp, path)
    return path


def _write_records(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write a json list one record per line (atomically), streaming, for detection files of millions of boxes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[")
        for i, rec in enumerate(records):
            f.write(",\n" if i else "\n")
            f.write(json.dumps(rec, default=_json_default))
        f.write("\n]\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def _partial_records_on_failure(out_dir: Path | None, name: str, records: Callable[[], Iterable[Mapping[str, Any]]]):
    """If the body raises (or is interrupted), write what was made so far to `out_dir/name`, then re-raise."""
    try:
        yield
    except BaseException:
        if out_dir is not None:
            with contextlib.suppress(Exception):
                _write_records(out_dir / name, records())
        raise


@contextlib.contextmanager
def _collect_warnings(notes: list[str]):
    """Python warnings raised inside become entries of `notes` (the run reports them once, in order)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        message = str(w.message)
        if issubclass(w.category, UserWarning) and message not in notes:
            notes.append(message)


# ------------------------------------------------------------------------------------------------ notes


def _protocol_notes(settings: RunSettings, stats: LoopStats, vocabulary: ClassVocabulary | None,
                    official_batch: int = 1) -> list[str]:
    notes = []
    if settings.batch_size != official_batch:
        notes.append(
            f"batch size {settings.batch_size}: padding to the batch's largest image changes GLIP's outputs slightly "
            f"(§1.1.7), so these numbers are approximate; the official protocol runs batch {official_batch}"
        )
    if stats.failed:
        notes.append(f"{len(stats.failed)} image(s) could not be read and count as having no detections "
                     f"(listed under failed_images in metrics.json), e.g. {stats.failed[0]['reason']}")
    if stats.unmapped_labels:
        if vocabulary is not None:
            names = [vocabulary.names[i] for i in sorted(stats.unmapped_labels)]
            notes.append(f"{len(names)} class(es) fell beyond the token limit (256) of their prompt chunk and were "
                         f"never scored, e.g. {names[:5]}; use a smaller --chunk-size")
        else:
            notes.append(f"{len(stats.unmapped_labels)} phrase(s) fell beyond the token limit and were never scored")
    if stats.size_mismatches:
        notes.append(f"{stats.size_mismatches} image file(s) differ in size from their annotation record; their "
                     "boxes were scaled to the annotated size, as the official evaluation does")
    return notes


def _report(benchmark: str, settings: RunSettings | None, stats: LoopStats | None, result_dict: dict[str, Any],
            notes: list[str], seconds: float, meta: Mapping[str, Any] | None, protocol: str,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": benchmark, "glipkit_version": __version__, "protocol": protocol}
    report.update(meta or {})
    if settings is not None:
        report["settings"] = settings.to_dict()
    if stats is not None:
        if stats.chunk_size:
            report["settings"]["chunk_size"] = stats.chunk_size
            report["prompts"] = stats.prompts
        report["num_images"] = stats.num_images
        report["failed_images"] = stats.failed
    report.update(extra or {})
    report.update({k: v for k, v in result_dict.items() if k != "warnings"})
    report["warnings"] = list(notes)
    report["seconds"] = round(seconds, 3)
    return report


# ----------------------------------------------------------------------------------------- COCO and ODinW


def _run_coco_style(model, data: Mapping[str, Any], vocabulary: ClassVocabulary, records: Sequence[ImageRecord],
                    settings: RunSettings, out_dir: Path | None, progress: Progress | None,
                    meta: Mapping[str, Any] | None, benchmark: str) -> BenchmarkRun:
    start = time.perf_counter()
    label_to_id = {i + 1: cat for i, cat in enumerate(vocabulary.category_ids)}  # contiguous 1..K -> json id
    detections: list[dict[str, Any]] = []

    def on_image(result: ImageDetections) -> None:
        # §7.4: COCO xywh with w = x2 - x1 + 1.
        detections.extend(detections_to_coco(result.record.image_id, result.boxes, result.scores,
                                             result.labels + 1, label_to_id, plus_one=True))

    with _partial_records_on_failure(out_dir, "detections.partial.json", lambda: detections):
        stats = detect_images(model, records, vocabulary, settings, on_image, progress)
    notes = _protocol_notes(settings, stats, vocabulary)
    with _collect_warnings(notes):
        result = evaluate_coco(data, detections, image_ids=[r.image_id for r in records])
    seconds = time.perf_counter() - start
    run = BenchmarkRun(benchmark, result.metrics, result, stats.num_images, stats.failed, notes, seconds=seconds)
    protocol = (f"COCO box AP (pycocotools) on {len(records)} image(s); one prompt of the category names per "
                f"chunk of {stats.chunk_size} (§4.3, §7.5), {settings.detections_per_image} detections per image "
                "and chunk, xywh with +1 width (§7.4)")
    run.report = _report(benchmark, settings, stats, result.to_dict(), notes, seconds, meta, protocol)
    if out_dir is not None:
        run.files["detections"] = str(_write_records(out_dir / "detections.json", detections))
        run.files["metrics"] = str(_write_json(out_dir / "metrics.json", run.report))
    return run


def run_coco(
    model,
    ann_file: PathLike,
    images_dir: PathLike,
    settings: RunSettings | None = None,
    prompt_table: PromptTable | None = None,
    out_dir: PathLike | None = None,
    progress: Progress | None = None,
    meta: Mapping[str, Any] | None = None,
) -> BenchmarkRun:
    """Zero-shot (or fine-tuned) detection on a COCO-format set, scored with pycocotools."""
    settings = settings or RunSettings()
    data = read_annotations(ann_file, "COCO annotation file")
    vocabulary = class_vocabulary(data["categories"], prompt_table)
    records = image_records(data["images"], images_dir, settings.max_images)
    meta = {"annotations": str(ann_file), "images": str(images_dir), **(meta or {})}
    return _run_coco_style(model, data, vocabulary, records, settings, _out(out_dir), progress, meta, "coco")


def score_coco_detections(ann_file: PathLike, detections: PathLike, out_dir: PathLike | None = None,
                          meta: Mapping[str, Any] | None = None) -> BenchmarkRun:
    """Score an existing COCO detections json (no model) and write metrics.json."""
    start = time.perf_counter()
    data = read_annotations(ann_file, "COCO annotation file")
    notes: list[str] = []
    with _collect_warnings(notes):
        result = evaluate_coco(data, detections)
    seconds = time.perf_counter() - start
    run = BenchmarkRun("coco", result.metrics, result, result.num_images, warnings=notes, seconds=seconds)
    meta = {"annotations": str(ann_file), "detections": str(detections), **(meta or {})}
    run.report = _report("coco", None, None, result.to_dict(), notes, seconds, meta,
                         "COCO box AP (pycocotools) of a detections file")
    out = _out(out_dir)
    if out is not None:
        run.files["metrics"] = str(_write_json(out / "metrics.json", run.report))
    return run


def _out(out_dir: PathLike | None) -> Path | None:
    if out_dir is None:
        return None
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_odinw(root: PathLike, datasets: Sequence[OdinwDataset]):
    """The datasets' files under `root`; every missing path is named in one single-line error."""
    try:
        return resolve_datasets(root, datasets)
    except FileNotFoundError as error:
        raise FileNotFoundError("; ".join(line.strip() for line in str(error).splitlines())) from None


def run_odinw(
    model,
    root: PathLike,
    datasets: Sequence[OdinwDataset],
    settings: RunSettings | None = None,
    prompt_table: PromptTable | None = None,
    use_caption_prompts: bool = True,
    out_dir: PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> OdinwRun:
    """Each dataset as a COCO-format run with GLIP's category names and caption prompts, then the average AP.

    `prompt_table` (a user's --prompt-file) replaces the datasets' own caption prompts; it is looked up by the
    names GLIP prompts with (the override names). Every annotation file and prompt is checked before the model runs.
    """
    settings = settings or RunSettings()
    resolved = resolve_odinw(root, datasets)
    strict = prompt_table is None or len(resolved) == 1
    if prompt_table is not None and prompt_table.by_position is not None and len(resolved) > 1:
        raise PromptFileError(f"{prompt_table.source}: a list of prompts (one per class, in category order) fits one "
                              f"dataset only, but {len(resolved)} are selected; key the prompts by class name")
    plans = []
    used_names: set[str] = set()
    for d in resolved:
        data = read_annotations(d.ann_file, f"{d.name} annotation file")
        table = prompt_table if prompt_table is not None else (d.spec.prompts if use_caption_prompts else None)
        try:
            vocabulary = class_vocabulary(data["categories"], table, d.spec.category_names, strict=strict)
        except ValueError as error:
            raise ValueError(f"{d.name}: {error}") from None
        used_names.update(str((d.spec.category_names or {}).get(int(c["id"]), c["name"])) for c in data["categories"])
        plans.append((d, data, vocabulary, image_records(data["images"], d.img_dir, settings.max_images)))
    if prompt_table is not None and not strict and prompt_table.by_name:
        unknown = [n for n in prompt_table.by_name if n not in used_names]
        if unknown:
            raise PromptFileError(f"{prompt_table.source}: names classes that no selected dataset has: {unknown[:5]}")
    out = _out(out_dir)
    runs: dict[str, BenchmarkRun] = OrderedDict()
    for d, data, vocabulary, records in plans:
        step = (lambda done, total, name=d.name: progress(name, done, total)) if progress else None
        run_meta = {"dataset": d.name, "annotations": str(d.ann_file), "images": str(d.img_dir), **(meta or {})}
        runs[d.name] = _run_coco_style(model, data, vocabulary, records, settings,
                                       None if out is None else out / d.name, step, run_meta, f"odinw/{d.name}")
    notes: list[str] = []
    with _collect_warnings(notes):
        average = average_ap({name: run.metrics["AP"] for name, run in runs.items()})
    result = OdinwRun(runs, average, notes)
    if out is not None:
        summary = {
            "benchmark": "odinw", "glipkit_version": __version__, **(meta or {}), "root": str(root),
            "settings": settings.to_dict(), "caption_prompts": use_caption_prompts,
            "prompt_file": prompt_table.source if prompt_table is not None else None,
            "AP": {name: run.metrics["AP"] for name, run in runs.items()}, "average_AP": average,
            "warnings": notes,
        }
        result.files["metrics"] = str(_write_json(out / "metrics.json", summary))
    return result


# ------------------------------------------------------------------------------------------------ LVIS


def run_lvis(
    model,
    ann_file: PathLike,
    images_dir: PathLike,
    settings: RunSettings | None = None,
    prompt_table: PromptTable | None = None,
    out_dir: PathLike | None = None,
    progress: Progress | None = None,
    meta: Mapping[str, Any] | None = None,
    topk_per_category: int = DEFAULT_TOPK_PER_CATEGORY,
) -> BenchmarkRun:
    """LVIS fixed AP: 40 classes per chunk and 300 detections per image per chunk (the defaults of `lvis_settings`),
    every detection streamed into a per-category top-k (§7.5), boxes in xywh without +1 (§7.4)."""
    settings = settings or lvis_settings()
    start = time.perf_counter()
    data = read_annotations(ann_file, "LVIS annotation file")
    vocabulary = class_vocabulary(data["categories"], prompt_table)
    records = image_records(data["images"], images_dir, settings.max_images)
    ids = np.asarray(vocabulary.category_ids, dtype=np.int64)
    stream = TopKPerCategory(topk_per_category)

    def on_image(result: ImageDetections) -> None:
        boxes = result.boxes.double().numpy()
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # lvis_eval: no +1 (§7.4)
        stream.add_arrays(result.record.image_id, xywh, result.scores.double().numpy(), ids[result.labels.numpy()])

    out = _out(out_dir)
    with _partial_records_on_failure(out, "detections.partial.json", stream.records):
        stats = detect_images(model, records, vocabulary, settings, on_image, progress)
    notes = _protocol_notes(settings, stats, vocabulary)
    subset = [r.image_id for r in records] if settings.max_images is not None else None
    with _collect_warnings(notes):
        result = evaluate_lvis_fixed_ap(data, stream, topk_per_category, image_ids=subset)
    seconds = time.perf_counter() - start
    run = BenchmarkRun("lvis", result.metrics, result, stats.num_images, stats.failed, notes, seconds=seconds)
    protocol = (f"LVIS fixed AP (top {topk_per_category} per category, no per-image cap) on {len(records)} image(s); "
                f"{stats.chunk_size} classes per prompt chunk, {settings.detections_per_image} detections per image "
                "and chunk (§7.5), xywh without +1")
    meta = {"annotations": str(ann_file), "images": str(images_dir), **(meta or {})}
    run.report = _report("lvis", settings, stats, result.to_dict(), notes, seconds, meta, protocol)
    if out is not None:
        run.files["detections"] = str(_write_records(out / "detections.json", stream.records()))
        run.files["metrics"] = str(_write_json(out / "metrics.json", run.report))
    return run


def lvis_settings(**overrides: Any) -> RunSettings:
    """RunSettings with GLIP's LVIS command values (40 classes per chunk, 300 detections per image and chunk)."""
    values = {"chunk_size": LVIS_CHUNK_SIZE, "detections_per_image": LVIS_DETECTIONS_PER_IMAGE}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RunSettings(**values)


def score_lvis_detections(ann_file: PathLike, detections: PathLike, out_dir: PathLike | None = None,
                          meta: Mapping[str, Any] | None = None,
                          topk_per_category: int = DEFAULT_TOPK_PER_CATEGORY) -> BenchmarkRun:
    """Fixed AP of an existing LVIS detections json (xywh without +1), no model."""
    start = time.perf_counter()
    data = read_annotations(ann_file, "LVIS annotation file")
    notes: list[str] = []
    with _collect_warnings(notes):
        result = evaluate_lvis_fixed_ap(data, detections, topk_per_category)
    seconds = time.perf_counter() - start
    run = BenchmarkRun("lvis", result.metrics, result, result.num_images, warnings=notes, seconds=seconds)
    meta = {"annotations": str(ann_file), "detections": str(detections), **(meta or {})}
    run.report = _report("lvis", None, None, result.to_dict(), notes, seconds, meta,
                         f"LVIS fixed AP (top {topk_per_category} per category) of a detections file")
    out = _out(out_dir)
    if out is not None:
        run.files["metrics"] = str(_write_json(out / "metrics.json", run.report))
    return run


# --------------------------------------------------------------------------------------------- Flickr30K


def run_flickr(
    model,
    ann_file: PathLike,
    images_dir: PathLike,
    settings: RunSettings | None = None,
    merge_boxes: bool = False,
    out_dir: PathLike | None = None,
    progress: Progress | None = None,
    meta: Mapping[str, Any] | None = None,
    topk: Sequence[int] = FLICKR_TOPK,
) -> BenchmarkRun:
    """Phrase grounding Recall@k (any-box, IoU 0.5) on MDETR's final_flickr_*GT_{val,test}.json (§7.6).

    Each caption is its own prompt and each phrase's tokens_positive spans its positive map (label = phrase index
    + 1); an image's captions share one image encoding. `settings.max_images` counts distinct image files.
    predictions.json keeps the best max(topk) boxes of every phrase, all that Recall@k reads.
    """
    settings = settings or RunSettings(detections_per_image=FLICKR_DETECTIONS_PER_IMAGE)
    start = time.perf_counter()
    samples = load_flickr_grounding(ann_file, merge_boxes=merge_boxes)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {images_dir}")
    by_file: dict[str, list] = OrderedDict()
    for s in samples:
        by_file.setdefault(s.file_name, []).append(s)
    files = list(by_file)
    if settings.max_images is not None:
        if settings.max_images <= 0:
            raise ValueError(f"--max-images must be positive, got {settings.max_images}")
        files = files[: settings.max_images]
    records = [ImageRecord(name, images_dir / name, by_file[name][0].width, by_file[name][0].height) for name in files]
    if records and not any(r.path.is_file() for r in records):
        raise FileNotFoundError(
            f"none of the {len(records)} images is under {images_dir} (looked for {records[0].path})")
    captions = {
        name: [Caption(s.image_id, s.caption, tuple(p.spans for p in s.phrases)) for s in by_file[name] if s.phrases]
        for name in files
    }
    evaluated = [s for name in files for s in by_file[name]]
    keep = max(topk)
    predictions: dict[Any, list] = {}
    written: list[dict[str, Any]] = []

    def on_caption(result: CaptionDetections) -> None:
        num = len(result.caption.phrases)
        groups = group_by_phrase(result.boxes, result.scores, result.labels + 1, num)  # label = phrase index + 1
        predictions[result.caption.key] = groups
        phrases = []
        for j, g in enumerate(groups):
            order = np.argsort(-g.scores, kind="stable")[:keep]
            a, b = result.caption.phrases[j][0]
            phrases.append({"phrase": result.caption.text[a:b], "boxes": g.boxes[order].tolist(),
                            "scores": g.scores[order].tolist()})
        written.append({"image_id": result.caption.key, "file_name": result.record.image_id,
                        "caption": result.caption.text, "phrases": phrases})

    out = _out(out_dir)
    with _partial_records_on_failure(out, "predictions.partial.json", lambda: written):
        stats = ground_captions(model, records, captions, settings, on_caption, progress)
    notes = _protocol_notes(dataclasses.replace(settings, batch_size=1), stats, None)
    if settings.batch_size != 1:
        notes.append("--batch-size is ignored for Flickr30K: every image runs alone (batch 1, the official protocol)")
    with _collect_warnings(notes):
        result = evaluate_flickr_recall(evaluated, predictions, topk)
    seconds = time.perf_counter() - start
    metrics = {f"R@{k}": v for k, v in result.recall.items()}
    run = BenchmarkRun("flickr30k", metrics, result, stats.num_images, stats.failed, notes, seconds=seconds)
    protocol = (f"Flickr30K Entities phrase grounding, Recall@{'/'.join(map(str, topk))} at IoU 0.5, any-box "
                f"({'merged' if merge_boxes else 'separate'} ground truth) on {len(records)} image(s), "
                f"{len(evaluated)} caption(s); caption = prompt, "
                f"{settings.detections_per_image} detections per caption")
    meta = {"annotations": str(ann_file), "images": str(images_dir), **(meta or {})}
    run.report = _report("flickr30k", settings, stats, result.to_dict(), notes, seconds, meta, protocol,
                         {"metrics": metrics})
    if out is not None:
        run.files["predictions"] = str(_write_records(out / "predictions.json", written))
        run.files["metrics"] = str(_write_json(out / "metrics.json", run.report))
    return run
