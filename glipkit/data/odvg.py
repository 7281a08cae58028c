"""Gold data in ODVG jsonl (Grounding DINO's format): one image per line, an OD record or a VG record.

OD: {"filename", "height", "width", "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": int,
"category": str}]}} with an optional label map {"0": "person", ...}; prompted as GLIP trains on detection (§4.5).
VG: {"filename", ..., "grounding": {"caption": str, "regions": [{"bbox": [...], "phrase": str,
"tokens_positive": [[start, end]]}]}}; the caption is the prompt.
Lines are indexed by byte offset and parsed when read, so a file of millions of lines costs little memory.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from glipkit.data.detection_prompt import DetectionPromptBuilder, DetectionPromptConfig, prompted_example
from glipkit.data.grounding_example import BadSample, GroundingExample
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from glipkit.data.source import IndexedSource
from glipkit.files import read_json
from glipkit.model.prompts import Span


def odvg_box(bbox: Any) -> list[float]:
    """ODVG's [x1, y1, x2, y2] (x2 = x + w, exclusive, as converted from COCO) -> GLIP's +1 convention (§6.4)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return [x1, y1, x2 - 1, y2 - 1]


class OdvgSource(IndexedSource):
    """An ODVG jsonl file and its image directory (OD and VG records may be mixed)."""

    def __init__(
        self,
        path: str | os.PathLike,
        image_dir: str | os.PathLike,
        tokenizer,
        *,
        label_map: str | os.PathLike | dict | None = None,
        name: str = "odvg",
        prompt_cfg: DetectionPromptConfig | None = None,
        box_policy: str = "clip",
        shuffle: bool = True,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ODVG file not found: {self.path}")
        super().__init__(name, image_dir, box_policy=box_policy, shuffle=shuffle, max_image_pixels=max_image_pixels)
        self.offsets: list[int] = []
        categories: dict[int, str] = {}
        with self.path.open("rb") as handle:
            position = 0
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    self.offsets.append(position)
                    if label_map is None and b'"detection"' in line:
                        # Without a label map the vocabulary is every category named in the file.
                        for instance in self._parse(line, number).get("detection", {}).get("instances", []):
                            if "label" in instance and "category" in instance:
                                categories[int(instance["label"])] = str(instance["category"])
                position += len(line)
        if not self.offsets:
            raise ValueError(f"{self.path}: no records")
        if label_map is not None:
            mapping = label_map if isinstance(label_map, dict) else read_json(label_map, "ODVG label map")
            categories = {int(k): str(v) for k, v in mapping.items()}
        self.categories = categories
        self.prompts = DetectionPromptBuilder(categories, tokenizer, prompt_cfg) if categories else None

    def _parse(self, line: bytes, number: int) -> dict:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.path}:{number}: not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{self.path}:{number}: a record must be a JSON object")
        return record

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, index: int) -> dict:
        """The parsed record of line `index` (0-based among non-empty lines)."""
        with self.path.open("rb") as handle:
            handle.seek(self.offsets[index])
            return self._parse(handle.readline(), index + 1)

    def load(self, index: int, rng: random.Random) -> GroundingExample:
        record = self.record(index)
        key = str(record.get("filename", index))
        if "filename" not in record:
            raise BadSample("record without filename", key)
        if "grounding" in record:
            caption, boxes, spans = self._grounding(record["grounding"], key)
            category_ids = None
        elif "detection" in record:
            instances = record["detection"].get("instances", [])
            boxes = np.array([odvg_box(i["bbox"]) for i in instances], np.float32).reshape(-1, 4)
            category_ids = [int(i["label"]) for i in instances]
            caption, spans = "", []
        else:
            raise BadSample("record is neither OD nor VG", key)
        image, boxes, kept, events = self.image_and_boxes(record["filename"], key, boxes)
        if category_ids is None:
            return GroundingExample(key, image, caption, boxes, [spans[i] for i in kept], self.name, events)
        if self.prompts is None:
            raise BadSample("OD record without a vocabulary (give a label map)", key)
        category_ids = [category_ids[i] for i in kept]
        unknown = [c for c in category_ids if c not in self.categories]
        if unknown:
            raise BadSample("label not in the label map", key, str(sorted(set(unknown))))
        return prompted_example(key, image, boxes, category_ids, self.prompts, rng, self.name, events)

    def _grounding(self, grounding: dict, key: str) -> tuple[str, np.ndarray, list[list[Span]]]:
        caption = str(grounding.get("caption", ""))
        if not caption:
            raise BadSample("VG record without caption", key)
        boxes, spans = [], []
        for region in grounding.get("regions", []):
            region_spans = [(int(a), int(b)) for a, b in region.get("tokens_positive") or []]
            if not region_spans and region.get("phrase"):
                start = caption.find(str(region["phrase"]))
                if start >= 0:
                    region_spans = [(start, start + len(str(region["phrase"])))]
            region_spans = [(a, b) for a, b in region_spans if 0 <= a < b <= len(caption)]
            if not region_spans:
                continue
            boxes.append(odvg_box(region["bbox"]))
            spans.append(region_spans)
        return caption, np.array(boxes, np.float32).reshape(-1, 4), spans
