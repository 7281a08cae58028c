"""Label tables read back for people and other tools: rows with their kept boxes, their shards, their images.

`show`, `report` and `export` read `pseudo-label` (or `predict`) tables through here: `read_labelled` streams the
rows of a run through the load-time filters of data/pseudo.py, `resolve_shards` finds each table's shard, and
`read_images` fetches image bytes by key with the one shard reader (data/shards.py). A row's `shard` may also
name a plain image file (a `predict` table): its bytes are the image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from glipkit.data.images import IMAGE_EXTENSIONS, find_image_member
from glipkit.data.pseudo import PseudoAnnotation, PseudoFilter, filter_row
from glipkit.data.shards import ShardReadError, expand_shards, iter_samples, locate_shard, shard_stem
from glipkit.data.tables import iter_rows, label_table_paths

COLUMNS = ["key", "caption", "phrases", "shard", "width", "height", "boxes"]
NO_FILTER = PseudoFilter(min_score=0.0, min_boxes=0)


@dataclass
class LabelledImage:
    """One table row: where it comes from (table, shard) and its boxes after the filters (`labels`)."""

    table: Path
    shard: str
    labels: PseudoAnnotation
    flags: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.labels.key

    @property
    def grounded(self) -> bool:
        """Caption mode: every phrase is a span of the caption (classes-mode phrases have start = end = -1)."""
        return all(0 <= start < end for _, start, end in self.labels.phrases)


def read_labelled(tables: str | os.PathLike | Sequence[str | os.PathLike],
                  filters: PseudoFilter = NO_FILTER) -> Iterator[LabelledImage]:
    """The rows of the label tables (a spec for data/tables.label_table_paths), with the filters applied; rows
    keeping fewer than `filters.min_boxes` boxes are left out."""
    for table in label_table_paths(tables):
        names = set(_schema_names(table))
        columns = COLUMNS + (["flags"] if "flags" in names else [])
        for row in iter_rows(table, columns=[c for c in columns if c in names]):
            labels = filter_row(row, filters)
            if labels is not None:
                yield LabelledImage(table, str(row.get("shard") or ""), labels, list(row.get("flags") or []))


def _schema_names(table: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(table).names


def resolve_shards(items: Iterable[LabelledImage], shards: str | os.PathLike | Sequence[str | os.PathLike] | None
                   = None) -> dict[str, str]:
    """Where each row's `shard` value is: matched by stem among `shards` (a shard spec) when given, else the value
    itself, else the value relative to its table's directory. FileNotFoundError naming the first one not found."""
    by_stem = {shard_stem(p): str(p) for p in expand_shards(shards)} if shards is not None else None
    found: dict[str, str] = {}
    for item in items:
        if item.shard not in found:
            found[item.shard] = locate_shard(item.table, item.shard, by_stem)
    return found


def exclusive_boxes(boxes) -> np.ndarray:
    """The tables' boxes (GLIP's +1 convention: x1, y1 are the last pixels, §7.4) as exclusive xyxy, where
    x1 - x0 is the width: what COCO xywh, YOLO, ODVG and box sizes mean."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) + np.array([0, 0, 1, 1], np.float64)


def is_image_file(path: str) -> bool:
    """Whether a `shard` value names a plain image file (a `predict` table) rather than a tar shard."""
    return Path(path).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def read_images(shard: str, keys: Iterable[str]) -> Iterator[tuple[str, str, bytes | None, str | None]]:
    """(key, extension, image bytes, None) for each wanted key found in `shard`, in shard order, then
    (key, "", None, reason) for each key that is missing or could not be read."""
    wanted = set(keys)
    if is_image_file(shard):
        for key in wanted:
            try:
                yield key, Path(shard).suffix.lower().lstrip("."), Path(shard).read_bytes(), None
            except OSError as error:
                yield key, "", None, f"cannot read {shard}: {error.strerror or error}"
        return
    seen: set[str] = set()
    failure = None
    try:
        for sample in iter_samples(shard):
            if sample.key not in wanted or sample.key in seen:
                continue
            seen.add(sample.key)
            image = find_image_member(sample.files)
            yield (sample.key, image[0], image[1], None) if image else (sample.key, "", None, "no image in sample")
            if len(seen) == len(wanted):
                return
    except ShardReadError as error:
        failure = f"unreadable shard ({error.reason})"
    for key in sorted(wanted - seen):
        yield key, "", None, failure or f"key not found in {shard}"
