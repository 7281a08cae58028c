"""Running a GLIP over an evaluation set: class prompts, image loading, the batched and chunked loop (§4.3, §7).

Two loops:

* `detect_images`: one class vocabulary for every image (COCO, LVIS, ODinW). The vocabulary becomes GLIP's
  detection prompt (§4.3), split into chunks of categories when it does not fit the token limit (§7.5); the
  image features (Swin + FPN) are computed once per image batch and shared by every chunk (`GLIP.ground_batch`).
* `ground_captions`: one caption per sample with its phrases' character spans (Flickr30K, §7.6); all captions
  of one image share one image encoding.

Both hand back boxes in original-image pixels (xyxy); turning them into benchmark records is the caller's job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor

from glipkit.model.glip import GLIP, PromptChunk, autocast_for, rescale_boxes
from glipkit.model.prompts import (Span, VocabularyChunk, build_detection_prompt, clean_name, encode_prompts,
                                   vocabulary_chunks)
from glipkit.model.transforms import batch_images, preprocess_image
from glipkit.text.prompt_file import ClassPrompt, PromptTable

SEPARATOR = ". "  # DATASETS.SEPARATION_TOKENS of every pretrain config (§4.3 step 3)

Progress = Callable[[int, int], None]  # (images done, images in total)


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class ClassVocabulary:
    """The classes a detection prompt names, in label order: label i (0-based) is `category_ids[i]`.

    Class i is written `prefixes[i] + names[i] + suffixes[i]`; only `names[i]` is a positive span (§4.3 step 5).
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.category_ids)

    def prompt(self, indices: Sequence[int] | None = None) -> tuple[str, list[Span]]:
        """The prompt text of these classes (all by default) and each class's positive character span.

        §4.3: names joined by ". " with no trailing separator. With prompt engineering the separator still goes
        only *between* classes: "prefix + name + suffix, followed by SEP" (§4.3 step 5) is step 3's joining
        with each name replaced by its prefix/name/suffix, so the last class is not followed by a separator
        (the official `create_queries_and_maps` appends SEP for every class but the last, prompts or not).
        """
        indices = range(len(self)) if indices is None else indices
        return build_detection_prompt(
            [self.names[i] for i in indices], SEPARATOR,
            [self.prefixes[i] for i in indices], [self.suffixes[i] for i in indices], clean=False,
        )

    def chunks(self, tokenizer, chunk_size: int | None = None, max_length: int = 256) -> list[VocabularyChunk]:
        """The prompt chunks of `chunk_size` consecutive classes (None: one prompt when it fits, else 40; §7.5)."""
        return vocabulary_chunks(tokenizer, self.names, self.prefixes, self.suffixes, chunk_size, max_length,
                                 clean=False, separator=SEPARATOR)


def class_vocabulary(
    categories: Sequence[Mapping[str, Any]],
    prompt_table: PromptTable | None = None,
    names_override: Mapping[int, str] | None = None,
    strict: bool = True,
) -> ClassVocabulary:
    """A vocabulary from COCO-style `categories` (sorted by id, §4.3 step 1), optionally prompt-engineered.

    A class is known by its annotation name, or by `names_override[id]` (GLIP's OVERRIDE_CATEGORY, ODinW); the
    prompt table is looked up by that name. Names not written by the table are cleaned with GLIP's `clean_name`
    (§4.3 step 2); table text is used as written, as the official CAPTION_PROMPT entries are.
    `strict`: table entries naming no class are an error.
    """
    if not categories:
        raise ValueError("the annotations have no categories: nothing to prompt for")
    cats = sorted(categories, key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError("the annotations list a category id twice")
    keys = [str((names_override or {}).get(i, c["name"])) for i, c in zip(ids, cats)]
    if prompt_table is None:
        entries = [ClassPrompt("", clean_name(k), "") for k in keys]
    else:
        written = prompt_table.for_classes(keys, strict=strict)
        named = None if prompt_table.by_position is not None else set(prompt_table.by_name or {})
        entries = [p if named is None or k in named else ClassPrompt("", clean_name(k), "")
                   for k, p in zip(keys, written)]
    empty = [ids[i] for i, e in enumerate(entries) if not e.name.strip()]
    if empty:
        raise ValueError(f"category id(s) {empty[:5]} have an empty name after cleaning: nothing to ground")
    return ClassVocabulary(
        tuple(ids), tuple(e.name for e in entries), tuple(e.prefix for e in entries), tuple(e.suffix for e in entries)
    )


# ------------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageRecord:
    """One image to run on: its id in the annotations, its file, and the size the annotations give (0: unknown)."""

    image_id: Any
    path: Path
    width: int = 0
    height: int = 0


def image_path(record: Mapping[str, Any], images_dir: Path) -> Path:
    """Where an annotation's image lives under `images_dir`: its `file_name`, else the tail of its `coco_url`.

    LVIS v1 records have only `coco_url` (".../val2017/000000397133.jpg"): DIR/val2017/NAME is tried, then DIR/NAME.
    """
    if record.get("file_name"):
        return images_dir / str(record["file_name"])
    url = str(record.get("coco_url", ""))
    if not url:
        raise ValueError(f"image {record.get('id', '?')} has neither 'file_name' nor 'coco_url'")
    parts = url.rstrip("/").split("/")
    nested = images_dir / parts[-2] / parts[-1] if len(parts) >= 2 else None
    if nested is not None and nested.is_file():
        return nested
    return images_dir / parts[-1]


def image_records(images: Sequence[Mapping[str, Any]], images_dir: str | Path,
                  max_images: int | None = None) -> list[ImageRecord]:
    """ImageRecords of COCO-style image entries, sorted by id as GLIP's test loader iterates, the first `max_images`.

    Raises when not one of the files exists (a wrong --images directory), naming the first path looked for.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {images_dir}")
    entries = sorted(images, key=lambda r: r["id"])
    if max_images is not None:
        if max_images <= 0:
            raise ValueError(f"--max-images must be positive, got {max_images}")
        entries = entries[:max_images]
    records = [
        ImageRecord(r["id"], image_path(r, images_dir), int(r.get("width") or 0), int(r.get("height") or 0))
        for r in entries
    ]
    if records and not any(r.path.is_file() for r in records):
        raise FileNotFoundError(
            f"none of the {len(records)} images is under {images_dir} (looked for {records[0].path})")
    return records


class ImageFiles(torch.utils.data.Dataset):
    """Reads and preprocesses images (§1.1) for a DataLoader; an unreadable file yields its error instead."""

    def __init__(self, records: Sequence[ImageRecord], input_config) -> None:
        self.records = list(records)
        self.input_config = input_config

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, tuple[int, int] | None, str | None]:
        record = self.records[index]
        try:
            with Image.open(record.path) as image:
                image = image.convert("RGB")
        except Exception as error:  # a corrupt or missing file must not stop the run
            return index, None, None, f"cannot read {record.path}: {type(error).__name__}: {error}"
        return index, preprocess_image(image, self.input_config), (image.height, image.width), None


def _loader(records: Sequence[ImageRecord], model: GLIP, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(
        ImageFiles(records, model.config.input), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=list, pin_memory=next(model.parameters()).is_cuda,
    )


# --------------------------------------------------------------------------------------------- the loops


@dataclass
class RunSettings:
    """How to run the model over a set. batch_size 1 is the official protocol (§1.1.7: padding changes outputs)."""

    batch_size: int = 1
    chunk_size: int | None = None  # classes per prompt; None: one prompt when it fits, else 40 (§7.5)
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast)
    detections_per_image: int = 100  # per prompt chunk: §7.1 DETECTIONS_PER_IMG (COCO 100; LVIS command 300)
    max_images: int | None = None
    workers: int = 0  # DataLoader worker processes reading and resizing images

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--precision must be fp32, bf16 or fp16, not '{self.precision}'")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ImageDetections:
    """One image's detections in original pixels: xyxy boxes (N, 4), scores (N,), 0-based class indices (N,)."""

    record: ImageRecord
    boxes: Tensor
    scores: Tensor
    labels: Tensor


@dataclass
class LoopStats:
    """What a loop did besides detecting: unreadable images, classes no prompt could express, size mismatches."""

    num_images: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"image_id", "path", "reason"}
    unmapped_labels: set[int] = field(default_factory=set)
    size_mismatches: int = 0
    chunk_size: int = 0
    prompts: list[str] = field(default_factory=list)


def _original_size(record: ImageRecord, file_size: tuple[int, int], stats: LoopStats) -> tuple[int, int]:
    """The (h, w) boxes are rescaled to: the annotation's size when it has one, as the official COCO export does."""
    if record.width > 0 and record.height > 0:
        if (record.height, record.width) != tuple(file_size):
            stats.size_mismatches += 1
        return record.height, record.width
    return file_size


def detect_images(
    model: GLIP,
    records: Sequence[ImageRecord],
    vocabulary: ClassVocabulary,
    settings: RunSettings,
    on_image: Callable[[ImageDetections], None],
    progress: Progress | None = None,
) -> LoopStats:
    """Run GLIP with the vocabulary's prompt (chunked per §7.5) over the images; `on_image` gets each result.

    Each batch is encoded once (Swin + FPN) for all chunks. Per chunk, the detections of one image are capped at
    `settings.detections_per_image`; chunks are concatenated with no cross-chunk NMS (§7.5).
    Unreadable images are skipped and listed in the returned stats.
    """
    device = next(model.parameters()).device
    chunks = vocabulary.chunks(model.tokenizer, settings.chunk_size, model.config.language.max_query_len)
    chunk_size = chunks[1].offset if len(chunks) > 1 else len(vocabulary)
    postprocess = dataclasses.replace(model.config.postprocess, detections_per_image=settings.detections_per_image)
    stats = LoopStats(chunk_size=chunk_size, prompts=[chunk.text for chunk in chunks])
    total = len(records)
    done = 0
    if progress:
        progress(0, total)
    for batch in _loader(records, model, settings.batch_size, settings.workers):
        good = []
        for index, tensor, size, error in batch:
            if error is None:
                good.append((records[index], tensor, size))
            else:
                stats.failed.append({"image_id": records[index].image_id, "path": str(records[index].path),
                                     "reason": error})
        if good:
            pixels, input_sizes = batch_images([t for _, t, _ in good], model.config.input.size_divisibility)
            n = len(good)
            prompt_chunks = [PromptChunk([c.text] * n, [list(c.spans)] * n, [c.offset] * n) for c in chunks]
            with torch.no_grad(), autocast_for(device, settings.precision):
                detections, unmapped = model.ground_batch(pixels.to(device, non_blocking=True), input_sizes,
                                                          prompt_chunks, postprocess)
            for (record, _, file_size), det, input_size, missing in zip(good, detections, input_sizes, unmapped):
                stats.unmapped_labels.update(missing)
                original = _original_size(record, file_size, stats)
                boxes = rescale_boxes(det.boxes.float(), input_size, original)
                on_image(ImageDetections(record, boxes.cpu(), det.scores.float().cpu(), det.labels.cpu()))
                stats.num_images += 1
        done += len(batch)
        if progress:
            progress(done, total)
    return stats


@dataclass(frozen=True)
class Caption:
    """A caption to ground in one image; `phrases[j]` are the character spans of phrase j (one or more)."""

    key: Any
    text: str
    phrases: tuple[tuple[Span, ...], ...]


@dataclass
class CaptionDetections:
    """Detections of one caption in original pixels; labels are 0-based phrase indices."""

    caption: Caption
    record: ImageRecord
    boxes: Tensor
    scores: Tensor
    labels: Tensor


def phrase_positive_maps(model: GLIP, captions: Sequence[Caption]):
    """Tokenize the captions and build one positive-map row per phrase: the union of its spans' tokens (§4.4).

    Returns the EncodedPrompts with `positive_maps[b]` of shape (phrases of caption b, L).
    """
    flat_spans = [[span for spans in c.phrases for span in spans] for c in captions]
    encoded = encode_prompts(model.tokenizer, [c.text for c in captions], flat_spans,
                             model.config.language.max_query_len)
    maps = []
    for c, flat in zip(captions, encoded.positive_maps):
        rows, start = [], 0
        for spans in c.phrases:
            part = flat[start: start + len(spans)]
            rows.append(part.amax(dim=0) if len(spans) else flat.new_zeros(flat.shape[1]))
            start += len(spans)
        maps.append(torch.stack(rows) if rows else flat.new_zeros(0, flat.shape[1]))
    return dataclasses.replace(encoded, positive_maps=maps)


def ground_captions(
    model: GLIP,
    records: Sequence[ImageRecord],
    captions: Mapping[Any, Sequence[Caption]],
    settings: RunSettings,
    on_caption: Callable[[CaptionDetections], None],
    progress: Progress | None = None,
) -> LoopStats:
    """Ground each image's captions (`captions[record.image_id]`), one caption per text pass (batch 1, §7.6).

    The image is encoded once for all its captions: image features do not depend on the prompt, so this equals
    running every (image, caption) pair on its own. `settings.batch_size` is ignored (always one image).
    """
    device = next(model.parameters()).device
    postprocess = dataclasses.replace(model.config.postprocess, detections_per_image=settings.detections_per_image)
    stats = LoopStats()
    total = len(records)
    if progress:
        progress(0, total)
    for done, batch in enumerate(_loader(records, model, 1, settings.workers), start=1):
        [(index, tensor, file_size, error)] = batch
        record = records[index]
        if error is not None:
            stats.failed.append({"image_id": record.image_id, "path": str(record.path), "reason": error})
        else:
            original = _original_size(record, file_size, stats)
            pixels, input_sizes = batch_images([tensor], model.config.input.size_divisibility)
            with torch.no_grad(), autocast_for(device, settings.precision):
                features = model.encode_image(pixels.to(device))
                for caption in captions.get(record.image_id, ()):
                    encoded = phrase_positive_maps(model, [caption])
                    stats.unmapped_labels.update(_unmapped_phrases(caption, encoded.positive_maps[0]))
                    language = model.encode_text(encoded.input_ids.to(device), encoded.attention_mask.to(device))
                    outputs = model.fuse_and_predict(features, language)
                    [det] = model.detect(outputs, features, encoded.positive_maps, input_sizes, postprocess)
                    boxes = rescale_boxes(det.boxes.float(), input_sizes[0], original)
                    on_caption(CaptionDetections(caption, record, boxes.cpu(), det.scores.float().cpu(),
                                                 det.labels.cpu()))
            stats.num_images += 1
        if progress:
            progress(done, total)
    return stats


def _unmapped_phrases(caption: Caption, positive_map: Tensor) -> list[int]:
    return [j for j in range(len(caption.phrases)) if not bool(positive_map[j].any())]

