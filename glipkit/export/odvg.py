"""ODVG jsonl as Open-GroundingDino and mmdetection's ODVGDataset read it, beside `images/`.

Classes (a label map, `label_map.json` = {"0": name, ...}): OD records
{"filename", "height", "width", "detection": {"instances": [{"bbox", "label", "category"}]}}.
Captions: VG records {"filename", "height", "width", "grounding": {"caption", "regions": [{"bbox", "phrase",
"tokens_positive"}]}}. Boxes are [x1, y1, x2, y2] with exclusive x2, y2 (x2 = x + w), as ODVG converts COCO.
"""

from __future__ import annotations

import json
from pathlib import Path

from glipkit.export.image import ExportImage, save_image
from glipkit.files import atomic_path, write_json_atomic

RECORDS = "odvg.jsonl"
LABEL_MAP = "label_map.json"
IMAGES = "images"


def odvg_record(image: ExportImage, categories: list[str] | None) -> dict:
    """An OD record when `categories` is given, else a VG record of the caption's grounded phrases."""
    record = {"filename": image.file_name, "height": image.height, "width": image.width}
    boxes = [[round(v, 3) for v in box] for box in image.exclusive_boxes().tolist()]
    if categories is not None:
        record["detection"] = {"instances": [
            {"bbox": box, "label": int(c), "category": categories[int(c)], "score": round(float(s), 6)}
            for box, c, s in zip(boxes, image.categories.tolist(), image.scores.tolist())]}
    else:
        record["grounding"] = {"caption": image.caption, "regions": [
            {"bbox": box, "phrase": text, "tokens_positive": [[start, end]], "score": round(float(s), 6)}
            for box, (text, start, end), s in zip(boxes, image.phrases, image.scores.tolist())]}
    return record


class OdvgWriter:
    """Streams records to `odvg.jsonl` (renamed into place on `close()`); OD mode also writes the label map."""

    def __init__(self, out: Path, categories: list[str] | None, write_images: bool = True):
        self.out = Path(out)
        self.categories = categories
        self.write_images = write_images
        self._atomic = atomic_path(self.out / RECORDS)
        self._handle = Path(self._atomic.__enter__()).open("w", encoding="utf-8")

    def add(self, image: ExportImage, data: bytes | None) -> None:
        if self.write_images and data is not None:
            save_image(self.out / IMAGES, image.file_name, data)
        self._handle.write(json.dumps(odvg_record(image, self.categories), ensure_ascii=False) + "\n")

    def close(self) -> Path:
        self._handle.close()
        self._atomic.__exit__(None, None, None)
        if self.categories is not None:
            write_json_atomic(self.out / LABEL_MAP, {str(i): name for i, name in enumerate(self.categories)})
        return self.out / RECORDS

    def abort(self) -> None:
        self._handle.close()
        error = RuntimeError("export aborted")
        try:
            self._atomic.__exit__(RuntimeError, error, None)  # removes the temporary file
        except RuntimeError:
            pass
