"""Pseudo-labelled data: `pseudo-label` Parquet tables joined by key with the shards they label, streamed.

Filters run at load time on the table alone (`min_score` per box: pseudo-label's box threshold, `top_boxes`;
optional per-phrase NMS, `max_boxes`, `min_boxes` per image), so the kept images per shard are known before any
image is read. Images are decoded by data/images.decode_image with pseudo-label's pixel limit, so the student
sees the pixels its teacher labelled. Images are read shard by shard, in file order, and shuffled inside chunks
of `shuffle_chunk` kept samples; shard order is shuffled per epoch. Position p of the source is the same sample
in every process and after a resume.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from glipkit.data.detection_prompt import DetectionPromptBuilder, DetectionPromptConfig, prompted_example
from glipkit.data.grounding_example import BadSample, GroundingExample, clean_boxes, decode_example_image
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS, find_image_member
from glipkit.data.shards import ShardReadError, expand_shards, iter_samples, locate_shard, shard_stem
from glipkit.data.tables import iter_rows, label_table_paths, top_boxes
from glipkit.model.boxes import batched_nms
from glipkit.model.prompts import Span

_COLUMNS = ["key", "caption", "phrases", "shard", "width", "height", "boxes"]


@dataclass
class PseudoFilter:
    """Load-time filters of pseudo-labels (none by default: keep what the table holds)."""

    min_score: float = 0.0
    min_boxes: int = 1
    nms_iou: float | None = None  # per-phrase NMS IoU threshold (+1 convention), None = off
    max_boxes: int | None = None
    # NMS across phrases: one label per object, the teacher's best (None = off). GLIP's own NMS is per phrase, so
    # a teacher unsure between two classes labels one object twice; a student then learns both.
    agnostic_nms_iou: float | None = None


@dataclass
class PseudoRecipe:
    """How pseudo boxes enter the loss (the defaults: like gold boxes)."""

    box_loss_weight: float = 1.0  # box-regression and centerness loss weight (0: classification only, YOLO-World)
    score_weights: bool = False  # token loss of each box times the teacher's score
    negatives: bool = False  # classes prompts: the row's phrases without a kept box always named, as negatives


@dataclass
class PseudoAnnotation:
    """The kept pseudo-labels of one image: boxes (xyxy, original pixels), phrase index per box, the row's text."""

    key: str
    caption: str
    phrases: list[tuple[str, int, int]]
    width: int
    height: int
    boxes: np.ndarray
    phrase_index: np.ndarray
    scores: np.ndarray


@dataclass
class PseudoShard:
    """A labels table, the shard it labels, and how many of its images pass the filters."""

    table: Path
    shard: str  # a path, URL or pipe: (data/shards.locate_shard)
    kept: int
    rows: int


def filter_row(row: dict, flt: PseudoFilter) -> PseudoAnnotation | None:
    """Apply the filters to one table row; None when the image keeps fewer than `min_boxes` boxes. Kept boxes stay
    in table order."""
    phrases = [(str(p["text"]), int(p["start"]), int(p["end"])) for p in row.get("phrases") or []]
    raw = [b for b in row.get("boxes") or [] if 0 <= b["phrase"] < len(phrases)]
    boxes = np.array([[b["x0"], b["y0"], b["x1"], b["y1"]] for b in raw], np.float32).reshape(-1, 4)
    scores = np.array([b["score"] for b in raw], np.float32)
    labels = np.array([b["phrase"] for b in raw], np.int64)
    keep = np.sort(top_boxes(scores, flt.min_score))  # pseudo-label's box threshold, the same function
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    for iou, per_phrase in ((flt.nms_iou, True), (flt.agnostic_nms_iou, False)):
        if iou is not None and len(scores) > 1:
            groups = labels if per_phrase else np.zeros_like(labels)
            keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups),
                               iou).numpy()
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if flt.max_boxes is not None:
        keep = np.sort(top_boxes(scores, float("-inf"), flt.max_boxes))
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(scores) < flt.min_boxes:
        return None
    return PseudoAnnotation(str(row["key"]), str(row.get("caption") or ""), phrases, int(row.get("width") or 0),
                            int(row.get("height") or 0), boxes, labels, scores)


def label_tables(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The label tables of a directory (its `*.labels.parquet`; tables of an older glipkit named `<shard>.parquet`
    when it has none), a glob or a list (data/tables.label_table_paths)."""
    return label_table_paths(spec)


class PseudoLabelSource:
    """Pseudo-labels joined with their shards: the caption (or a class prompt) grounds the teacher's boxes.

    `shards` (a shard spec) says where the shards are, matched to each table's `shard` column by file stem;
    without it the column's path is used as written (relative paths from the working directory, then from
    the tables' directory). `prompt`: "caption" uses the row's caption and phrase spans; "classes" builds
    GLIP's detection prompt (§4.5) from the phrase texts over the vocabulary of all tables; "auto" picks
    "caption" when every phrase span matches its caption text, else "classes".
    """

    def __init__(
        self,
        labels: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer,
        *,
        shards: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        name: str = "pseudo",
        filters: PseudoFilter | None = None,
        prompt: str = "auto",
        prompt_cfg: DetectionPromptConfig | None = None,
        box_policy: str = "clip",
        shuffle_chunk: int = 1000,
        shuffle: bool = True,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        recipe: PseudoRecipe | None = None,
    ) -> None:
        if prompt not in ("auto", "caption", "classes"):
            raise ValueError(f"pseudo prompt must be auto, caption or classes, not {prompt!r}")
        self.name = name
        self.filters = filters or PseudoFilter()
        self.recipe = recipe or PseudoRecipe()
        self.box_policy = box_policy
        self.shuffle_chunk = max(1, int(shuffle_chunk))
        self.shuffle = shuffle
        self.max_image_pixels = max_image_pixels
        tables = label_tables(labels)
        by_stem = {shard_stem(p): p for p in expand_shards(shards)} if shards is not None else None

        self.shards: list[PseudoShard] = []
        vocabulary: set[str] = set()
        spans_match = True
        self.rows = 0
        for table in tables:
            kept, rows, shard_value = 0, 0, None
            for row in iter_rows(table, columns=_COLUMNS):
                rows += 1
                shard_value = shard_value or row.get("shard")
                annotation = filter_row(row, self.filters)
                if annotation is None:
                    continue
                kept += 1
                for text, start, end in annotation.phrases:
                    vocabulary.add(text)
                    spans_match &= annotation.caption[start:end] == text
            self.rows += rows
            if rows == 0:
                continue
            shard = locate_shard(table, shard_value, by_stem)
            self.shards.append(PseudoShard(table, shard, kept, rows))
        self.count = sum(s.kept for s in self.shards)
        if self.count == 0:
            raise ValueError(f"no pseudo-labelled image passes the filters ({self.rows} rows in {len(tables)} "
                             f"tables; min score {self.filters.min_score}, min boxes {self.filters.min_boxes})")
        self.prompt_mode = ("caption" if spans_match else "classes") if prompt == "auto" else prompt
        self.vocabulary = sorted(vocabulary)
        ids = {text: i for i, text in enumerate(self.vocabulary)}
        self.vocabulary_ids = ids
        self.prompts = DetectionPromptBuilder(dict(enumerate(self.vocabulary)), tokenizer, prompt_cfg) \
            if self.prompt_mode == "classes" else None

    def __len__(self) -> int:
        return self.count

    # -- streaming ------------------------------------------------------------------------------------------------

    def stream(self, start: int, seed: int) -> Iterator[tuple]:
        epoch, offset = divmod(start, self.count)
        while True:
            order = list(range(len(self.shards)))
            if self.shuffle:
                random.Random(f"{seed}:{self.name}:epoch{epoch}").shuffle(order)
            for shard_index in order:
                kept = self.shards[shard_index].kept
                if offset >= kept:
                    offset -= kept
                    continue
                yield from itertools.islice(self._shard_items(shard_index, seed, epoch), offset, None)
                offset = 0
            epoch += 1

    def _annotations(self, shard: PseudoShard) -> dict[str, PseudoAnnotation]:
        kept = {}
        for row in iter_rows(shard.table, columns=_COLUMNS):
            annotation = filter_row(row, self.filters)
            if annotation is not None:
                kept[annotation.key] = annotation
        return kept

    def _shard_items(self, shard_index: int, seed: int, epoch: int) -> Iterator[tuple]:
        """All `kept` items of one shard: found samples chunk-shuffled in file order, then the missing ones."""
        shard = self.shards[shard_index]
        annotations = self._annotations(shard)
        if len(annotations) != shard.kept:
            raise RuntimeError(f"{shard.table} changed while training ({len(annotations)} kept rows, "
                               f"{shard.kept} before)")
        chunk: list[tuple] = []
        chunk_number = 0
        found: set[str] = set()
        failure = None

        def flush() -> list[tuple]:
            items = list(chunk)
            if self.shuffle:
                random.Random(f"{seed}:{self.name}:epoch{epoch}:{shard_index}:{chunk_number}").shuffle(items)
            return items

        try:
            for sample in iter_samples(shard.shard):
                annotation = annotations.get(sample.key)
                if annotation is None or sample.key in found:
                    continue
                found.add(sample.key)
                image = find_image_member(sample.files)
                chunk.append((annotation, image[1] if image else None, None))
                if len(chunk) == self.shuffle_chunk:
                    yield from flush()
                    chunk, chunk_number = [], chunk_number + 1
        except ShardReadError as error:
            failure = f"unreadable shard ({error.reason})"
        yield from flush()
        reason = failure or "key not found in its shard"
        for key, annotation in annotations.items():
            if key not in found:
                yield (annotation, None, reason)

    def materialize(self, item: tuple, rng: random.Random) -> GroundingExample:
        annotation, image_bytes, reason = item
        key = annotation.key
        if reason is not None:
            raise BadSample(reason, key)
        if image_bytes is None:
            raise BadSample("no image in sample", key)
        image = decode_example_image(image_bytes, key, self.max_image_pixels)
        boxes = annotation.boxes
        if annotation.width > 0 and annotation.height > 0 and (image.width, image.height) != (
                annotation.width, annotation.height):
            # The table's boxes are in the pixels the teacher saw; follow a re-encoded image's size.
            scale = np.array([image.width / annotation.width, image.height / annotation.height] * 2, np.float32)
            boxes = boxes * scale
        boxes, kept, events = clean_boxes(boxes, image.width, image.height, self.box_policy)
        phrase_index = annotation.phrase_index[kept]
        recipe = self.recipe
        token_weights = annotation.scores[kept].astype(np.float32) if recipe.score_weights else None
        box_weights = np.full(len(kept), recipe.box_loss_weight, np.float32) if recipe.box_loss_weight != 1 else None
        if self.prompt_mode == "caption":
            # A caption names its box-less phrases already: they are negatives without the recipe.
            spans: list[list[Span]] = [[annotation.phrases[p][1:]] for p in phrase_index]
            return GroundingExample(key, image, annotation.caption, boxes, spans, self.name, events, token_weights,
                                    box_weights)
        assert self.prompts is not None
        classes = [self.vocabulary_ids[annotation.phrases[p][0]] for p in phrase_index]
        boxed = set(phrase_index.tolist())
        negatives = [self.vocabulary_ids[text] for i, (text, _, _) in enumerate(annotation.phrases)
                     if i not in boxed] if recipe.negatives else []
        return prompted_example(key, image, boxes, classes, self.prompts, rng, self.name, events, negatives,
                                token_weights, box_weights)
