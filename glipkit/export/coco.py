"""COCO detection json: `instances.json` (xywh, ids from 1, categories, area, iscrowd 0, the teacher's score)
beside `images/`. Caption-mode rows also carry MDETR's grounding fields (`caption`, `tokens_positive`)."""

from __future__ import annotations

from pathlib import Path

from glipkit.export.image import ExportImage, save_image
from glipkit.files import write_json_atomic

ANNOTATIONS = "instances.json"
IMAGES = "images"


class CocoWriter:
    """Collects images and boxes; `close()` writes `instances.json` (atomically) and returns its path."""

    def __init__(self, out: Path, categories: list[str], write_images: bool = True, info: dict | None = None):
        self.out = Path(out)
        self.write_images = write_images
        self.data = {
            "info": info or {},
            "images": [],
            "annotations": [],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
        }

    def add(self, image: ExportImage, data: bytes | None) -> None:
        if self.write_images and data is not None:
            save_image(self.out / IMAGES, image.file_name, data)
        image_id = len(self.data["images"]) + 1
        record = {"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height}
        if image.caption:
            record["caption"] = image.caption
        self.data["images"].append(record)
        annotations = self.data["annotations"]
        for box, score, category, (text, start, end) in zip(image.exclusive_boxes().tolist(), image.scores.tolist(),
                                                             image.categories.tolist(), image.phrases):
            x0, y0, x1, y1 = box
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category) + 1,
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                          "score": round(float(score), 6), "phrase": text}
            if 0 <= start < end:
                annotation["tokens_positive"] = [[start, end]]
            annotations.append(annotation)

    def close(self) -> Path:
        return write_json_atomic(self.out / ANNOTATIONS, self.data, indent=None)
