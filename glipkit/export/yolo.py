"""An ultralytics YOLO detection dataset: `images/{train,val}/`, `labels/{train,val}/<stem>.txt` with one
`class cx cy w h` line per box (normalised to the image), and `data.yaml` (path, train, val, names).

The split is by a seeded hash of the key, so an image stays in its split whatever the order or the filters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import numpy as np

from glipkit.export.image import ExportImage, save_image
from glipkit.files import write_text_atomic

DATA_YAML = "data.yaml"
SPLITS = ("train", "val")


def in_validation(key: str, fraction: float, seed: int) -> bool:
    """Whether `key` falls in the validation split (a seeded hash below `fraction`)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def yolo_lines(image: ExportImage) -> list[str]:
    """`class cx cy w h` per box, normalised by the image size and clipped to [0, 1]."""
    size = np.array([image.width, image.height] * 2, np.float64)
    boxes = (image.exclusive_boxes() / size).clip(0.0, 1.0)
    lines = []
    for (x0, y0, x1, y1), category in zip(boxes.tolist(), image.categories.tolist()):
        lines.append(f"{int(category)} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}")
    return lines


class YoloWriter:
    """Writes each image and its label file as it comes; `close()` writes `data.yaml` and returns its path."""

    def __init__(self, out: Path, categories: list[str], val_fraction: float = 0.1, seed: int = 0):
        self.out = Path(out)
        self.categories = categories
        self.val_fraction = val_fraction
        self.seed = seed
        self.counts = dict.fromkeys(SPLITS, 0)
        for split in SPLITS:  # both exist even when one is empty: the checker needs the val path
            (self.out / "images" / split).mkdir(parents=True, exist_ok=True)
            (self.out / "labels" / split).mkdir(parents=True, exist_ok=True)

    def add(self, image: ExportImage, data: bytes | None) -> None:
        if data is None:
            return
        split = "val" if in_validation(image.key, self.val_fraction, self.seed) else "train"
        save_image(self.out / "images" / split, image.file_name, data)
        label = self.out / "labels" / split / PurePosixPath(image.file_name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        lines = yolo_lines(image)
        label.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        self.counts[split] += 1

    def close(self) -> Path:
        import yaml

        data = {"path": str(self.out.resolve()), "train": "images/train", "val": "images/val",
                "names": dict(enumerate(self.categories))}
        return write_text_atomic(self.out / DATA_YAML, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
