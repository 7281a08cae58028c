"""The benchmarks as `glipkit eval` runs them: model over a set, records in the benchmark's format, scores, files.

* COCO (and any COCO-format set): GLIP's class-name prompt (§4.3), 100 detections per image, COCO xywh with the
  +1 width (§7.4), box AP by pycocotools.
* LVIS: 40 classes per prompt chunk, 300 detections per image and chunk, xywh without +1, fixed AP (top 10,000
  per category over the dataset, §7.5) by `evaluation.lvis`.
* Flickr30K: the caption is the prompt and each phrase's spans its positive map, Recall@1/5/10 any-box (§7.6).
* ODinW: a list of COCO-format sets with GLIP's names and caption prompts, AP per set and the average.

Every run writes, when given an output directory, its records (detections.json / predictions.json) and a
metrics.json that holds the numbers, the settings, the prompts and every warning (see `report`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from glipkit import __version__
from glipkit.engine.evaluation.loop import (Caption, CaptionDetections, ImageDetections, ImageRecord, RunSettings,
                                            checked_records, detect_images, ground_captions, image_records,
                                            limit_images)
from glipkit.engine.evaluation.report import (BenchmarkRun, OdinwRun, collect_warnings, finish_run, output_dir,
                                              partial_records_on_failure, protocol_notes, write_json)
from glipkit.engine.progress import ProgressCallback
from glipkit.evaluation.coco import category_label_map, detections_to_coco, evaluate_coco, read_coco_json
from glipkit.evaluation.flickr import DEFAULT_TOPK, evaluate_flickr_recall, group_by_phrase, load_flickr_grounding
from glipkit.evaluation.lvis import DEFAULT_TOPK_PER_CATEGORY, TopKPerCategory, evaluate_lvis_fixed_ap
from glipkit.evaluation.odinw import (ODINW_13, OdinwDataset, average_ap, load_dataset_list, resolve_datasets,
                                     select_datasets)
from glipkit.model.glip import GLIP
from glipkit.text.prompt_file import PromptFileError, PromptTable
from glipkit.text.vocabulary import ClassVocabulary, class_vocabulary

PathLike = str | Path

# What each benchmark keeps per image and prompt chunk (§7.1, §7.5, §7.6).
LVIS_DETECTIONS_PER_IMAGE = 300
LVIS_CHUNK_SIZE = 40
FLICKR_DETECTIONS_PER_IMAGE = 100


def _meta(ann_file: PathLike, inputs: PathLike, meta: Mapping[str, Any] | None, inputs_key: str = "images"
          ) -> dict[str, Any]:
    return {"annotations": str(ann_file), inputs_key: str(inputs), **(meta or {})}


# ----------------------------------------------------------------------------------------- COCO and ODinW


def _run_coco_style(model: GLIP, data: Mapping[str, Any], vocabulary: ClassVocabulary,
                    records: Sequence[ImageRecord], settings: RunSettings, out_dir: Path | None,
                    progress: ProgressCallback | None, meta: Mapping[str, Any], benchmark: str) -> BenchmarkRun:
    start = time.perf_counter()
    label_to_id = category_label_map(data["categories"])  # contiguous 1..K -> json id, the vocabulary's order
    detections: list[dict[str, Any]] = []

    def on_image(result: ImageDetections) -> None:
        # §7.4: COCO xywh with w = x2 - x1 + 1.
        detections.extend(detections_to_coco(result.record.image_id, result.boxes, result.scores,
                                             result.labels + 1, label_to_id, plus_one=True))

    with partial_records_on_failure(out_dir, "detections.partial.json", lambda: detections):
        stats = detect_images(model, records, vocabulary, settings, on_image, progress, benchmark)
    notes = protocol_notes(settings, stats, vocabulary)
    with collect_warnings(notes):
        result = evaluate_coco(data, detections, image_ids=[r.image_id for r in records])
    protocol = (f"COCO box AP (pycocotools) on {len(records)} image(s); one prompt of the category names per "
                f"chunk of {stats.chunk_size} (§4.3, §7.5), {settings.detections_per_image} detections per image "
                "and chunk, xywh with +1 width (§7.4)")
    return finish_run(benchmark, result.metrics, result, notes, start, meta, protocol, out_dir, settings, stats,
                      "detections.json", detections)


def run_coco(
    model: GLIP,
    ann_file: PathLike,
    images_dir: PathLike,
    settings: RunSettings | None = None,
    prompt_table: PromptTable | None = None,
    out_dir: PathLike | None = None,
    progress: ProgressCallback | None = None,
    meta: Mapping[str, Any] | None = None,
) -> BenchmarkRun:
    """Zero-shot (or fine-tuned) detection on a COCO-format set, scored with pycocotools."""
    settings = settings or RunSettings()
    data = read_coco_json(ann_file, "COCO annotation file")
    vocabulary = class_vocabulary(data["categories"], prompt_table)
    records = image_records(data["images"], images_dir, settings.max_images)
    return _run_coco_style(model, data, vocabulary, records, settings, output_dir(out_dir), progress,
                           _meta(ann_file, images_dir, meta), "coco")


def score_coco_detections(ann_file: PathLike, detections: PathLike, out_dir: PathLike | None = None,
                          meta: Mapping[str, Any] | None = None) -> BenchmarkRun:
    """Score an existing COCO detections json (no model) and write metrics.json."""
    start = time.perf_counter()
    data = read_coco_json(ann_file, "COCO annotation file")
    notes: list[str] = []
    with collect_warnings(notes):
        result = evaluate_coco(data, detections)
    return finish_run("coco", result.metrics, result, notes, start, _meta(ann_file, detections, meta, "detections"),
                      "COCO box AP (pycocotools) of a detections file", output_dir(out_dir))


def odinw_datasets(names: Sequence[str] | None, dataset_list: PathLike | None = None) -> list[OdinwDataset]:
    """The named datasets (all when None) of a user's dataset list, or of ODinW-13 without one."""
    return select_datasets(names, load_dataset_list(dataset_list) if dataset_list is not None else ODINW_13)


def resolve_odinw(root: PathLike, datasets: Sequence[OdinwDataset]):
    """The datasets' files under `root`; every missing path is named in one single-line error."""
    try:
        return resolve_datasets(root, datasets)
    except FileNotFoundError as error:
        raise FileNotFoundError("; ".join(line.strip() for line in str(error).splitlines())) from None


def run_odinw(
    model: GLIP,
    root: PathLike,
    datasets: Sequence[OdinwDataset],
    settings: RunSettings | None = None,
    prompt_table: PromptTable | None = None,
    use_caption_prompts: bool = True,
    out_dir: PathLike | None = None,
    progress: ProgressCallback | None = None,
    meta: Mapping[str, Any] | None = None,
) -> OdinwRun:
    """Each dataset as a COCO-format run with GLIP's category names and caption prompts, then the average AP.

    `prompt_table` (a user's --prompt-file) replaces the datasets' own caption prompts; it is looked up by the
    names GLIP prompts with (the override names). Every annotation file and prompt is checked before the model runs.
    Progress events are reported per dataset (task `odinw/NAME`).
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
        data = read_coco_json(d.ann_file, f"{d.name} annotation file")
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
    out = output_dir(out_dir)
    runs: dict[str, BenchmarkRun] = OrderedDict()
    for d, data, vocabulary, records in plans:
        run_meta = {"dataset": d.name, **_meta(d.ann_file, d.img_dir, meta)}
        runs[d.name] = _run_coco_style(model, data, vocabulary, records, settings,
                                       None if out is None else out / d.name, progress, run_meta, f"odinw/{d.name}")
    notes: list[str] = []
    with collect_warnings(notes):
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
        result.files["metrics"] = str(write_json(out / "metrics.json", summary))
    return result


# ------------------------------------------------------------------------------------------------ LVIS


def run_lvis(
    model: GLIP,
    ann_file: PathLike,
    images_dir: PathLike,
    settings: RunSettings | None = None,
    prompt_table: PromptTable | None = None,
    out_dir: PathLike | None = None,
    progress: ProgressCallback | None = None,
    meta: Mapping[str, Any] | None = None,
    topk_per_category: int = DEFAULT_TOPK_PER_CATEGORY,
) -> BenchmarkRun:
    """LVIS fixed AP: by default 40 classes per chunk and 300 detections per image per chunk (GLIP's LVIS command),
    every detection streamed into a per-category top-k (§7.5), boxes in xywh without +1 (§7.4)."""
    settings = settings or RunSettings(chunk_size=LVIS_CHUNK_SIZE, detections_per_image=LVIS_DETECTIONS_PER_IMAGE)
    start = time.perf_counter()
    data = read_coco_json(ann_file, "LVIS annotation file")
    vocabulary = class_vocabulary(data["categories"], prompt_table)
    records = image_records(data["images"], images_dir, settings.max_images)
    ids = np.asarray(vocabulary.category_ids, dtype=np.int64)
    stream = TopKPerCategory(topk_per_category)

    def on_image(result: ImageDetections) -> None:
        boxes = result.boxes.double().numpy()
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # lvis_eval: no +1 (§7.4)
        stream.add_arrays(result.record.image_id, xywh, result.scores.double().numpy(), ids[result.labels.numpy()])

    out = output_dir(out_dir)
    with partial_records_on_failure(out, "detections.partial.json", stream.records):
        stats = detect_images(model, records, vocabulary, settings, on_image, progress, "lvis")
    notes = protocol_notes(settings, stats, vocabulary)
    subset = [r.image_id for r in records] if settings.max_images is not None else None
    with collect_warnings(notes):
        result = evaluate_lvis_fixed_ap(data, stream, topk_per_category, image_ids=subset)
    protocol = (f"LVIS fixed AP (top {topk_per_category} per category, no per-image cap) on {len(records)} image(s); "
                f"{stats.chunk_size} classes per prompt chunk, {settings.detections_per_image} detections per image "
                "and chunk (§7.5), xywh without +1")
    return finish_run("lvis", result.metrics, result, notes, start, _meta(ann_file, images_dir, meta), protocol, out,
                      settings, stats, "detections.json", stream.records())


def score_lvis_detections(ann_file: PathLike, detections: PathLike, out_dir: PathLike | None = None,
                          meta: Mapping[str, Any] | None = None,
                          topk_per_category: int = DEFAULT_TOPK_PER_CATEGORY) -> BenchmarkRun:
    """Fixed AP of an existing LVIS detections json (xywh without +1), no model."""
    start = time.perf_counter()
    data = read_coco_json(ann_file, "LVIS annotation file")
    notes: list[str] = []
    with collect_warnings(notes):
        result = evaluate_lvis_fixed_ap(data, detections, topk_per_category)
    return finish_run("lvis", result.metrics, result, notes, start, _meta(ann_file, detections, meta, "detections"),
                      f"LVIS fixed AP (top {topk_per_category} per category) of a detections file", output_dir(out_dir))


# --------------------------------------------------------------------------------------------- Flickr30K


def run_flickr(
    model: GLIP,
    ann_file: PathLike,
    images_dir: PathLike,
    settings: RunSettings | None = None,
    merge_boxes: bool = False,
    out_dir: PathLike | None = None,
    progress: ProgressCallback | None = None,
    meta: Mapping[str, Any] | None = None,
    topk: Sequence[int] = DEFAULT_TOPK,
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
    by_file: dict[str, list] = OrderedDict()
    for s in samples:
        by_file.setdefault(s.file_name, []).append(s)
    files = limit_images(list(by_file), settings.max_images)
    records = checked_records(
        [ImageRecord(name, images_dir / name, by_file[name][0].width, by_file[name][0].height) for name in files],
        images_dir)
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

    out = output_dir(out_dir)
    with partial_records_on_failure(out, "predictions.partial.json", lambda: written):
        stats = ground_captions(model, records, captions, settings, on_caption, progress, "flickr30k")
    notes = protocol_notes(dataclasses.replace(settings, batch_size=1), stats, None)
    if settings.batch_size != 1:
        notes.append("--batch-size is ignored for Flickr30K: every image runs alone (batch 1, the official protocol)")
    with collect_warnings(notes):
        result = evaluate_flickr_recall(evaluated, predictions, topk)
    metrics = {f"R@{k}": v for k, v in result.recall.items()}
    protocol = (f"Flickr30K Entities phrase grounding, Recall@{'/'.join(map(str, topk))} at IoU 0.5, any-box "
                f"({'merged' if merge_boxes else 'separate'} ground truth) on {len(records)} image(s), "
                f"{len(evaluated)} caption(s); caption = prompt, "
                f"{settings.detections_per_image} detections per caption")
    return finish_run("flickr30k", metrics, result, notes, start, _meta(ann_file, images_dir, meta), protocol, out,
                      settings, stats, "predictions.json", written, {"metrics": metrics})
