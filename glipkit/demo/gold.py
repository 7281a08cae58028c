"""Gold of the demo samples: COCO / MDETR-style annotation splits for training from scratch, and gold phrase
tables for demo shards (pseudo-label without running a phrase extractor)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from glipkit.data.shards import iter_samples, shard_stem, shard_url
from glipkit.data.tables import PHRASES_SCHEMA, PHRASES_SUFFIX, write_table
from glipkit.demo.samples import CATEGORIES, SHAPES, make_samples


def write_coco_split(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    *,
    min_size: int = 160,
    max_size: int = 320,
    max_objects: int = 3,
    jpeg_quality: int = 90,
    shard_index: int = 0,
) -> Path:
    """Write `count` samples as `<out_dir>/images/<key>.jpg` and `<out_dir>/instances.json`; returns the json.

    The json is COCO detection (categories = CATEGORIES, ids 1..11; bbox = [x0, y0, x1 - x0, y1 - y0] of the
    exclusive gold box) and MDETR-style grounding at once: each image has its `caption`, each annotation the
    `tokens_positive` span of its noun phrase. Different seeds (or shard indices) give independent draws (train vs held-out val).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = make_samples(count, seed, shard_index=shard_index, min_size=min_size, max_size=max_size,
                           max_objects=max_objects)
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        file_name = f"{sample.key}.jpg"
        sample.render().save(out / "images" / file_name, format="JPEG", quality=jpeg_quality)
        sample.image = None  # keep memory flat for large splits
        images.append({"id": image_id, "file_name": file_name, "width": sample.width, "height": sample.height,
                       "caption": sample.caption})
        for obj in sample.objects:
            x0, y0, x1, y1 = obj.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": obj.category_id,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "tokens_positive": [list(obj.span)], "phrase": sample.caption[obj.span[0] : obj.span[1]],
            })
    data = {
        "info": {"description": f"glipkit synthetic shapes, seed {seed}, shard {shard_index}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape" if name in SHAPES else "object"}
                       for i, name in enumerate(CATEGORIES)],
    }
    path = out / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path



def write_gold_phrases(shards: Iterable[str | os.PathLike], out_dir: str | Path) -> Path:
    """Write `<out_dir>/<stem>.phrases.parquet` per demo shard with the gold noun-phrase spans of its .json members,
    as `extract-phrases` would (extractor "gold"); returns `out_dir`."""
    for shard in shards:
        rows = []
        for sample in iter_samples(shard, extensions=("json",)):
            meta = json.loads(sample.files["json"])
            caption = meta["caption"]
            spans = sorted({tuple(o["span"]) for o in meta["objects"]})
            rows.append({"key": sample.key, "caption": caption,
                         "phrases": [{"text": caption[a:b], "start": a, "end": b} for a, b in spans]})
        write_table(Path(out_dir) / f"{shard_stem(shard)}{PHRASES_SUFFIX}", rows, PHRASES_SCHEMA,
                    "extract-phrases", {"extractor": "gold", "input": shard_url(shard)})
    return Path(out_dir)


def write_gold_coco(shards: Iterable[str | os.PathLike], path: str | Path) -> Path:
    """Write the gold boxes of demo shards as COCO json (`file_name` = `<key>.jpg`, categories = CATEGORIES), the
    gold subset `glipkit report --gold` compares labels with."""
    images, annotations = [], []
    for shard in shards:
        for sample in iter_samples(shard, extensions=("json",)):
            meta = json.loads(sample.files["json"])
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{sample.key}.jpg", "width": meta["width"],
                           "height": meta["height"]})
            for obj in meta["objects"]:
                x0, y0, x1, y1 = obj["box"]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": obj["category_id"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)]}
    Path(path).write_text(json.dumps(data), encoding="utf-8")
    return Path(path)
