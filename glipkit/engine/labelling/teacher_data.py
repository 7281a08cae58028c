"""The pseudo-label input pipeline: shards -> decoded, resized, aspect-ratio-bucketed uint8 image batches.

`TeacherDataset` is an IterableDataset meant for a DataLoader with `batch_size=None`: each worker takes a
disjoint slice of the (rank's) shards (data/shards.py), reads their samples, finds each caption's phrases
(joined from an extract-phrases table, or extracted right there with the same extractors), decodes and
resizes the images, sorts a window of them by aspect ratio and yields ready, padded batches. All of that runs
in the workers, overlapping the model. A batch holds samples of one shard only, and after a shard's last
batch the worker yields a `ShardEnd` with what it could not read, so the consumer can finish that shard's file.

Batches depend only on a shard's content and the settings, never on the number of workers or ranks, so
re-running a shard (resume, another rank layout) gives the same batches and the same outputs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS, NO_IMAGE, ImageDecodeError, decode_image, \
    find_image_member, set_pil_pixel_limit
from glipkit.data.shards import CaptionError, ShardReadError, iter_samples, sample_caption, shard_stem, \
    shard_url, shards_for_worker
from glipkit.data.tables import PHRASES_SUFFIX, read_metadata, read_table
from glipkit.engine.labelling.extract_phrases import extract_each, stored_caption
from glipkit.engine.shard_job import DONE, FAILED, stopped_reading
from glipkit.model.transforms import batch_images, resize_image
from glipkit.text.phrases import lower_same_length

CAPTION = "caption"
CLASSES = "classes"
PROMPT_MODES = (CAPTION, CLASSES)

# Stable failure reasons (besides those of data/images.py and data/shards.py).
NO_PHRASES_ROW = "no row in the phrases table"
BAD_PHRASES = "phrase spans do not match the caption"
EXTRACTION_FAILED = "phrase extraction failed"
DAMAGED = "truncated or corrupt shard"
UNEXPECTED = "unexpected error"


@dataclass
class LoaderSettings:
    """What the workers do: prompt mode, where phrases come from, image size, batching, the pixel limit."""

    prompt_mode: str = CAPTION
    phrases_dir: Path | None = None  # extract-phrases output to join by key; None: extract on the fly
    extraction: Any = None  # ExtractPhrasesSettings when extracting on the fly (caption mode, no phrases_dir)
    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    batch_size: int = 8
    bucket_window: int = 8  # batches per aspect-ratio sorting window; 1 disables bucketing
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class SampleRecord:
    """A sample that will be a row: its position in the shard, key, caption, phrases and original size."""

    index: int
    key: str
    caption: str
    phrases: list[dict]  # {"text", "start", "end"}; empty in classes mode
    width: int
    height: int
    meta: dict = field(default_factory=dict)  # img2dataset's url, original_width, original_height (Sample.meta)


@dataclass
class ImageBatch:
    """Resized images of one shard, zero-padded to a common size (a multiple of the size divisibility)."""

    shard: str
    images: Tensor  # (B, 3, H, W) uint8 RGB
    sizes: list[tuple[int, int]]  # each image's resized (h, w) inside the padding
    records: list[SampleRecord]

    def pin_memory(self) -> "ImageBatch":
        return ImageBatch(self.shard, self.images.pin_memory(), self.sizes, self.records)

    @property
    def original_sizes(self) -> list[tuple[int, int]]:
        return [(r.height, r.width) for r in self.records]


@dataclass
class ShardEnd:
    """Sent after the last batch of a shard: how reading it went."""

    shard: str
    status: str = DONE  # DONE, PARTIAL, UNREADABLE, or FAILED (e.g. its phrases table is missing)
    read: int = 0  # samples met, good or bad
    failures: list[tuple[int, str, str, str]] = field(default_factory=list)  # (index, key, reason, detail)
    unlabelled: list[SampleRecord] = field(default_factory=list)  # no phrase to ground: rows without a model pass
    error: str | None = None
    image_pixels: int = 0  # resized pixels of the batched images
    batch_pixels: int = 0  # pixels of the padded batches (padding = batch_pixels - image_pixels)
    worker_seconds: float = 0.0
    extractor_settings: dict | None = None


def phrases_path(phrases_dir: str | os.PathLike, shard: str | os.PathLike) -> Path:
    """The extract-phrases table of a shard: `<phrases_dir>/<stem>.phrases.parquet`."""
    return Path(phrases_dir) / f"{shard_stem(shard)}{PHRASES_SUFFIX}"


class TeacherDataset(IterableDataset):
    """Yields ImageBatch and ShardEnd items for the shards of this DataLoader worker (see the module docstring).

    Iterating sets PIL's pixel limit (`max_image_pixels`) in the iterating process: each worker, or this process
    when the DataLoader has no workers.
    """

    def __init__(self, shards: Sequence[str | os.PathLike], settings: LoaderSettings):
        super().__init__()
        self.shards = [str(s) for s in shards]
        self.settings = settings
        if settings.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}")

    def __iter__(self) -> Iterator[ImageBatch | ShardEnd]:
        if get_worker_info() is not None:
            torch.set_num_threads(1)  # workers decode; the model's process owns the cores' BLAS threads
        set_pil_pixel_limit(self.settings.max_image_pixels)
        for shard in shards_for_worker(self.shards):
            yield from self.shard_items(shard)

    # -- one shard ------------------------------------------------------------------------------------------------

    def shard_items(self, shard: str) -> Iterator[ImageBatch | ShardEnd]:
        """The batches of one shard, then its ShardEnd."""
        started = time.perf_counter()
        end = ShardEnd(shard)
        table = None
        if self.settings.prompt_mode == CAPTION and self.settings.phrases_dir is not None:
            try:
                table = _read_phrases_table(phrases_path(self.settings.phrases_dir, shard), shard)
            except PhrasesMismatch as e:
                end.status, end.error = FAILED, str(e)
                end.worker_seconds = time.perf_counter() - started
                yield end
                return
            except Exception as e:
                end.status, end.error = FAILED, f"cannot read the phrases table: {e}"
                end.worker_seconds = time.perf_counter() - started
                yield end
                return
        window: list[tuple[int, str, str, bytes, list[dict] | None, dict]] = []
        window_size = self.settings.batch_size * max(1, self.settings.bucket_window)
        try:
            for index, sample in enumerate(iter_samples(shard)):
                end.read += 1
                try:
                    prepared = self._sample_fields(index, sample, table, end)
                except PhrasesMismatch:
                    raise
                except Exception as e:  # never let one sample stop the shard
                    end.failures.append((index, sample.key, UNEXPECTED, f"{type(e).__name__}: {e}"))
                    continue
                if prepared is not None:
                    window.append(prepared)
                if len(window) >= window_size:
                    yield from self._window_batches(shard, window, end)
                    window = []
        except ShardReadError as e:
            end.error = str(e)
            end.status, end.read = stopped_reading(
                e, end.read, lambda index, key, detail: end.failures.append((index, key, DAMAGED, detail)))
        except PhrasesMismatch as e:  # the shard is not what its phrases table was made from: no output
            end.status, end.error, window = FAILED, str(e), []
        if window:
            yield from self._window_batches(shard, window, end)
        end.worker_seconds = time.perf_counter() - started
        if self.settings.prompt_mode == CAPTION and table is None and self.settings.extraction is not None:
            end.extractor_settings = self._extractor().settings()
        yield end

    def _sample_fields(self, index, sample, table, end: ShardEnd):
        """(index, key, caption, image bytes, phrases or None, meta) of a sample, or None after recording its
        failure."""
        if sample.error:  # a duplicate key: the first sample of that key is the one labelled
            end.failures.append((index, sample.key, sample.error, ""))
            return None
        image = find_image_member(sample.files)
        if image is None:
            end.failures.append((index, sample.key, NO_IMAGE, f"members: {', '.join(sample.extensions) or 'none'}"))
            return None
        phrases = None
        if table is not None:
            row = table.get(sample.key)
            if row is None:
                end.failures.append((index, sample.key, NO_PHRASES_ROW, ""))
                return None
            caption, phrases = row
            _check_same_caption(caption, sample, self.settings.phrases_dir)
            bad = [p for p in phrases if not (0 <= p["start"] <= p["end"] <= len(caption))
                   or caption[p["start"]:p["end"]] != p["text"]]
            if bad:
                end.failures.append((index, sample.key, BAD_PHRASES, repr(bad[0])))
                return None
        else:
            try:
                caption = sample_caption(sample)
            except CaptionError as e:
                if self.settings.prompt_mode == CAPTION:
                    end.failures.append((index, sample.key, e.reason, str(e)))
                    return None
                caption = ""  # classes mode labels the image without a caption
        return index, sample.key, caption, image[1], phrases, sample.meta

    def _window_batches(self, shard: str, window, end: ShardEnd) -> Iterator[ImageBatch]:
        """Find phrases (if needed), decode and resize a window of samples, sort by aspect ratio, yield batches."""
        if self.settings.prompt_mode == CAPTION and any(w[4] is None for w in window):
            window = self._extract(window, end)
        decoded: list[tuple[SampleRecord, Tensor]] = []
        for index, key, caption, data, phrases, meta in window:
            try:
                image = decode_image(data, self.settings.max_image_pixels)
            except ImageDecodeError as e:
                end.failures.append((index, key, e.reason, e.detail))
                continue
            record = SampleRecord(index, key, caption, phrases or [], image.width, image.height, meta)
            if self.settings.prompt_mode == CAPTION and not record.phrases:
                end.unlabelled.append(record)  # nothing to ground: written with an empty box list and a flag
                continue
            try:
                resized = resize_image(image, self.settings.min_size, self.settings.max_size)
                pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
            except Exception as e:
                end.failures.append((index, key, UNEXPECTED, f"resize: {type(e).__name__}: {e}"))
                continue
            decoded.append((record, pixels))
        # Aspect-ratio bucketing: neighbours in this order have similar shapes, so batches need little padding.
        decoded.sort(key=lambda item: (item[1].shape[1] / item[1].shape[2], item[0].index))
        size = self.settings.batch_size
        for start in range(0, len(decoded), size):
            chunk = decoded[start : start + size]
            images, sizes = batch_images([pixels for _, pixels in chunk], self.settings.size_divisibility)
            end.image_pixels += sum(h * w for h, w in sizes)
            end.batch_pixels += images.shape[0] * images.shape[2] * images.shape[3]
            yield ImageBatch(shard, images, sizes, [record for record, _ in chunk])

    def _extractor(self):
        from glipkit.text.phrases import get_extractor

        extraction = self.settings.extraction
        return get_extractor(extraction.extractor, extraction.options, extraction.spacy_model)

    def _extract(self, window, end: ShardEnd):
        """Fill in the phrases of a window by extracting them as extract-phrases does (same function, extractor
        and options); a caption the extractor fails on is a failed sample."""
        extractor = self._extractor()
        found = extract_each(extractor, [w[2] for w in window], self.settings.extraction.batch_size)
        out = []
        for (index, key, caption, data, _, meta), phrases in zip(window, found):
            if isinstance(phrases, Exception):
                end.failures.append((index, key, EXTRACTION_FAILED, f"{type(phrases).__name__}: {phrases}"))
                continue
            out.append((index, key, stored_caption(caption, extractor.options), data, [p.as_dict() for p in phrases],
                        meta))
        return out


class PhrasesMismatch(ValueError):
    """A phrases table that was not made from the shard it is joined with: the shard fails with this reason."""


def _read_phrases_table(path: Path, shard: str) -> dict[str, tuple[str, list[dict]]]:
    """The rows of a shard's phrases table by key; PhrasesMismatch unless its recorded input is that shard."""
    recorded = (read_metadata(path).get("settings") or {}).get("input")
    if recorded is None or shard_url(recorded) != shard_url(shard):
        made_from = f"was made from {recorded}" if recorded else "records no input shard"
        raise PhrasesMismatch(f"phrases table {path} {made_from}, not {shard_url(shard)}; run extract-phrases on "
                              "these shards")
    table = read_table(path, columns=["key", "caption", "phrases"]).to_pydict()
    return {key: (caption, list(phrases or [])) for key, caption, phrases in
            zip(table["key"], table["caption"], table["phrases"])}


def _check_same_caption(caption: str, sample, phrases_dir) -> None:
    """PhrasesMismatch unless a phrases row's caption is the sample's (as extract-phrases stores it)."""
    try:
        shard_caption = sample_caption(sample)
    except CaptionError:
        shard_caption = None
    if shard_caption is None or caption not in (shard_caption, lower_same_length(shard_caption)):
        raise PhrasesMismatch(f"the --phrases {phrases_dir} table of {sample.shard} has another caption for key "
                              f"{sample.key!r} ({caption[:60]!r}, the shard's: {(shard_caption or '')[:60]!r}): it "
                              "was made from other data")
