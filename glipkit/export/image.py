"""One labelled image as the converters see it: its file name, size, caption and kept boxes by category."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from glipkit.data.labels import exclusive_boxes


@dataclass
class ExportImage:
    """Boxes are absolute pixel xyxy in GLIP's +1 convention (x1, y1 inclusive), as in the label tables;
    `categories` index the export's category names; `phrases` holds each box's (text, start, end)."""

    key: str
    file_name: str  # relative to the export's image directory
    width: int
    height: int
    caption: str
    boxes: np.ndarray
    scores: np.ndarray
    categories: np.ndarray
    phrases: list[tuple[str, int, int]]

    def exclusive_boxes(self) -> np.ndarray:
        """xyxy with exclusive x1, y1 (x1 = x0 + width): the boxes COCO xywh, YOLO and ODVG describe."""
        return exclusive_boxes(self.boxes)


def safe_file_name(key: str, extension: str) -> str:
    """`key.ext` as a relative path; ValueError for keys that would leave the output folder."""
    path = PurePosixPath(f"{key}.{extension}" if extension else key)
    if path.is_absolute() or ".." in path.parts or not key.strip():
        raise ValueError(f"sample key {key!r} is not usable as a file name")
    return str(path)


def save_image(directory: Path, file_name: str, data: bytes) -> Path:
    """Write image bytes under `directory` as they are (no re-encoding: the boxes index these pixels)."""
    path = directory / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
