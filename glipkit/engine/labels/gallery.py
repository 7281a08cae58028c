"""`glipkit show`: a seeded sample of labelled images -> thumbnails and the HTML gallery (viz/gallery.py).

The sample is the N keys with the smallest seeded hash, chosen in one pass with a bounded heap, so a run of
millions costs one read of its tables and the images of the sample only.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from glipkit.data.images import ImageDecodeError, decode_image
from glipkit.data.labels import LabelledImage, read_images, read_labelled, resolve_shards
from glipkit.data.pseudo import PseudoFilter
from glipkit.viz.gallery import THUMBS, write_gallery


@dataclass
class GallerySettings:
    sample: int = 500  # images shown (0: all)
    seed: int = 0
    min_score: float = 0.0  # boxes below are not in the gallery at all (the slider starts here)
    thumbnail: int = 320  # long side of the thumbnails in pixels
    per_page: int = 48
    shards: str | Sequence[str] | None = None


@dataclass
class GalleryReport:
    path: Path
    images: int = 0
    boxes: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)


def sample_rank(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def choose_sample(items, size: int, seed: int) -> list[LabelledImage]:
    """The `size` items with the smallest seeded hash of their key (all when size is 0), in table order."""
    if size <= 0:
        return list(items)
    heap: list[tuple[int, int, LabelledImage]] = []
    for order, item in enumerate(items):
        entry = (-sample_rank(seed, item.key), order, item)
        if len(heap) < size:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    return [item for _, _, item in sorted(heap, key=lambda e: e[1])]


def thumbnail_jpeg(data: bytes, size: int) -> bytes:
    image = decode_image(data)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def gallery_item(item: LabelledImage, thumb: str) -> dict:
    labels = item.labels
    return {"key": item.key, "thumb": thumb, "width": labels.width, "height": labels.height,
            "caption": labels.caption, "phrases": [list(p) for p in labels.phrases],
            "boxes": [[*(round(float(v), 1) for v in box), round(float(s), 4), int(p)]
                      for box, s, p in zip(labels.boxes, labels.scores, labels.phrase_index)]}


def make_gallery(labels: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
                 settings: GallerySettings | None = None) -> GalleryReport:
    """Sample the labelled images, write their thumbnails and the gallery page; returns where and what."""
    settings = settings or GallerySettings()
    chosen = choose_sample(read_labelled(labels, PseudoFilter(min_score=settings.min_score, min_boxes=0)),
                           settings.sample, settings.seed)
    out = Path(out)
    (out / THUMBS).mkdir(parents=True, exist_ok=True)
    shards = resolve_shards(chosen, settings.shards)
    by_shard: dict[str, list[LabelledImage]] = defaultdict(list)
    for item in chosen:
        by_shard[item.shard].append(item)
    report = GalleryReport(out)
    entries: dict[int, dict] = {}
    position = {id(item): i for i, item in enumerate(chosen)}
    for shard, items in by_shard.items():
        by_key = {item.key: item for item in items}
        for key, _, data, reason in read_images(shards[shard], list(by_key)):
            item = by_key[key]
            try:
                thumb = thumbnail_jpeg(data, settings.thumbnail) if data is not None else None
            except ImageDecodeError as error:
                thumb, reason = None, f"image not decodable ({error})"
            if thumb is None:
                report.missing.append((key, reason or "no image"))
                continue
            index = position[id(item)]
            name = f"{THUMBS}/{index:06d}.jpg"
            (out / name).write_bytes(thumb)
            entries[index] = gallery_item(item, name)
    items = [entries[i] for i in sorted(entries)]
    report.images, report.boxes = len(items), sum(len(i["boxes"]) for i in items)
    report.path = write_gallery(out, items, f"glipkit labels: {len(items)} images", settings.per_page,
                                settings.min_score)
    return report
