"""Running a GLIP over an evaluation set through the one Predictor: image files, and two loops (§4.3, §7.5, §7.6).

* `detect_images`: one class vocabulary for every image (COCO, LVIS, ODinW). The vocabulary becomes GLIP's
  detection prompt (§4.3), split into chunks of categories when it does not fit the token limit (§7.5); the
  image features (Swin + FPN) are computed once per image batch and shared by every chunk.
* `ground_captions`: the captions of an image, each with its phrases' character spans (Flickr30K, §7.6); all
  captions of one image share one image encoding.

Both hand back boxes in original-image pixels (xyxy); turning them into benchmark records is the caller's job.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from glipkit.data.images import decode_image
from glipkit.engine.predictor import Predictor, PredictorSettings
from glipkit.engine.progress import ProgressCallback, ProgressEvent
from glipkit.engine.runtime import PRECISIONS
from glipkit.model.glip import GLIP
from glipkit.model.prompts import PromptChunk, Span
from glipkit.model.transforms import batch_images, resize_image, to_uint8_tensor
from glipkit.text.vocabulary import ClassVocabulary

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
    entries = sorted(images, key=lambda r: r["id"])
    images_dir = Path(images_dir)
    return checked_records(
        [ImageRecord(r["id"], image_path(r, images_dir), int(r.get("width") or 0), int(r.get("height") or 0))
         for r in limit_images(entries, max_images)], images_dir)


def limit_images(items: Sequence[Any], max_images: int | None) -> Sequence[Any]:
    """The first `max_images` items (all for None); --max-images must be positive."""
    if max_images is None:
        return items
    if max_images <= 0:
        raise ValueError(f"--max-images must be positive, got {max_images}")
    return items[:max_images]


def checked_records(records: list[ImageRecord], images_dir: Path) -> list[ImageRecord]:
    """`records`, after checking that `images_dir` exists and holds at least one of their files."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {images_dir}")
    if records and not any(r.path.is_file() for r in records):
        raise FileNotFoundError(
            f"none of the {len(records)} images is under {images_dir} (looked for {records[0].path})")
    return records


class ImageFiles(torch.utils.data.Dataset):
    """Decodes and resizes images (§1.1.2) to uint8 tensors for a DataLoader; an unreadable file yields its error."""

    def __init__(self, records: Sequence[ImageRecord], min_size: int, max_size: int) -> None:
        self.records = list(records)
        self.min_size = min_size
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, tuple[int, int] | None, str | None]:
        record = self.records[index]
        try:
            image = decode_image(record.path.read_bytes())
        except Exception as error:  # a corrupt or missing file must not stop the run
            return index, None, None, f"cannot read {record.path}: {type(error).__name__}: {error}"
        return index, to_uint8_tensor(resize_image(image, self.min_size, self.max_size)), (image.height, image.width), \
            None


# --------------------------------------------------------------------------------------------- the loops


@dataclass
class RunSettings:
    """How to run the model over a set. batch_size 1 is the official protocol (§1.1.7: padding changes outputs)."""

    batch_size: int = 1
    chunk_size: int | None = None  # classes per prompt; None: one prompt when it fits, else 40 (§7.5)
    precision: str = "fp32"  # the official protocol; auto: bf16 on CUDA, fp32 elsewhere
    detections_per_image: int = 100  # per prompt chunk: §7.1 DETECTIONS_PER_IMG (COCO 100; LVIS command 300)
    max_images: int | None = None
    workers: int = 0  # DataLoader worker processes reading and resizing images

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'")
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
    precision: str = ""  # as resolved on the device (auto -> bf16 or fp32)


def _predictor(model: GLIP, settings: RunSettings) -> Predictor:
    postprocess = dataclasses.replace(model.config.postprocess, detections_per_image=settings.detections_per_image)
    # fp32 is the official protocol: no TF32 either. The one predictor normalises the uint8 images on the device,
    # bit-identical to the official preprocessing at batch 1.
    return Predictor(model, PredictorSettings(settings.precision, allow_tf32=settings.precision != "fp32",
                                              postprocess=postprocess))


def _image_batches(records: Sequence[ImageRecord], model: GLIP, batch_size: int, workers: int, stats: LoopStats,
                   progress: ProgressCallback | None, task: str
                   ) -> Iterator[list[tuple[ImageRecord, Tensor, tuple[int, int]]]]:
    """Each batch's readable images as (record, resized uint8 tensor, original size (h, w) of the annotation, or of
    the file when the annotation gives none); unreadable ones go to `stats.failed`. Progress follows each batch."""
    cfg = model.config.input
    loader = torch.utils.data.DataLoader(
        ImageFiles(records, cfg.min_size, cfg.max_size), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=list, pin_memory=next(model.parameters()).is_cuda,
    )
    start = time.perf_counter()
    done = 0

    def report() -> None:
        if progress is not None:
            progress(ProgressEvent(task, done, len(records), "images", time.perf_counter() - start))

    report()
    for batch in loader:
        good = []
        for index, tensor, file_size, error in batch:
            record = records[index]
            if error is None:
                good.append((record, tensor, _original_size(record, file_size, stats)))
            else:
                stats.failed.append({"image_id": record.image_id, "path": str(record.path), "reason": error})
        if good:
            yield good
        done += len(batch)
        report()


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
    progress: ProgressCallback | None = None,
    task: str = "coco",
) -> LoopStats:
    """Run GLIP with the vocabulary's prompt (chunked per §7.5) over the images; `on_image` gets each result.

    Each batch is encoded once (Swin + FPN) for all chunks. Per chunk, the detections of one image are capped at
    `settings.detections_per_image`; chunks are concatenated with no cross-chunk NMS (§7.5).
    Unreadable images are skipped and listed in the returned stats.
    """
    predictor = _predictor(model, settings)
    chunks = vocabulary.chunks(model.tokenizer, settings.chunk_size, model.config.language.max_query_len)
    stats = LoopStats(chunk_size=chunks[1].offset if len(chunks) > 1 else len(vocabulary),
                      prompts=[chunk.text for chunk in chunks], precision=predictor.precision)
    for batch in _image_batches(records, model, settings.batch_size, settings.workers, stats, progress, task):
        pixels, sizes = batch_images([tensor for _, tensor, _ in batch], predictor.size_divisibility)
        groundings = predictor.ground(pixels, sizes, [original for _, _, original in batch],
                                      PromptChunk.for_vocabulary(chunks, len(batch)))
        for (record, _, _), grounding in zip(batch, groundings):
            stats.unmapped_labels.update(grounding.unmapped)
            on_image(ImageDetections(record, grounding.boxes, grounding.scores, grounding.labels))
            stats.num_images += 1
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


def ground_captions(
    model: GLIP,
    records: Sequence[ImageRecord],
    captions: Mapping[Any, Sequence[Caption]],
    settings: RunSettings,
    on_caption: Callable[[CaptionDetections], None],
    progress: ProgressCallback | None = None,
    task: str = "flickr30k",
) -> LoopStats:
    """Ground each image's captions (`captions[record.image_id]`), one caption per text pass (batch 1, §7.6).

    Caption c is prompt chunk c of its image, so the image is encoded once for all its captions: image features
    do not depend on the prompt, so this equals running every (image, caption) pair on its own.
    `settings.batch_size` is ignored (always one image).
    """
    predictor = _predictor(model, settings)
    stats = LoopStats(precision=predictor.precision)
    for [(record, tensor, original)] in _image_batches(records, model, 1, settings.workers, stats, progress, task):
        image_captions = captions.get(record.image_id, ())
        if image_captions:
            pixels, sizes = batch_images([tensor], predictor.size_divisibility)
            chunks = [PromptChunk.for_captions([c.text], [c.phrases]) for c in image_captions]
            [per_caption] = predictor.ground_per_chunk(pixels, sizes, [original], chunks)
            for caption, grounding in zip(image_captions, per_caption):
                stats.unmapped_labels.update(grounding.unmapped)
                on_caption(CaptionDetections(caption, record, grounding.boxes, grounding.scores, grounding.labels))
        stats.num_images += 1
    return stats
