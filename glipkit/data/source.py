"""What a training data source is: a deterministic, endless, resumable stream of examples.

A source is read by position: position p of a source is always the same sample with the same augmentation
randomness, whatever process, DataLoader worker or resumed run reads it. That is what makes `--resume` exact
and 1-process and N-process runs equal. `stream(start, seed)` yields cheap items (annotations, maybe raw
bytes) for positions start, start+1, ... over as many epochs as asked; `materialize(item, rng)` turns one into a
GroundingExample (decoding the image) and raises BadSample for a sample that cannot be used.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
from PIL import Image

from glipkit.data.grounding_example import GroundingExample, clean_boxes, open_image
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS


class ExampleSource(Protocol):
    name: str

    def __len__(self) -> int:
        """Samples in one epoch."""

    def stream(self, start: int, seed: int) -> Iterator[Any]:
        """Endless items from position `start` on."""

    def materialize(self, item: Any, rng: random.Random) -> GroundingExample:
        """The example of one item (raises BadSample)."""


def sample_rng(seed: int, source: str, position: int) -> random.Random:
    """The random generator of one sample of one source: a function of (seed, source, position) only."""
    return random.Random(f"{seed}:{source}:{position}")


def epoch_order(count: int, seed: int, source: str, epoch: int, shuffle: bool = True) -> list[int]:
    """The order in which an indexed source visits its samples in `epoch` (a seeded permutation)."""
    order = list(range(count))
    if shuffle:
        random.Random(f"{seed}:{source}:epoch{epoch}").shuffle(order)
    return order


class IndexedSource:
    """Base of sources whose samples can be read in any order: annotation files and an image directory.

    Subclasses implement `__len__` and `load(index, rng)` (reading images with `image_and_boxes`), or derive from
    ImageRecordSource; epochs visit the samples in a seeded permutation (`shuffle=False`: file order).
    """

    def __init__(self, name: str, image_dir: str | os.PathLike, *, box_policy: str = "clip", shuffle: bool = True,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.name = name
        self.shuffle = shuffle
        self.box_policy = box_policy
        self.max_image_pixels = max_image_pixels
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.image_dir}")

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, rng: random.Random) -> GroundingExample:
        raise NotImplementedError

    def image_and_boxes(self, file_name: str, key: str, boxes: np.ndarray
                        ) -> tuple[Image.Image, np.ndarray, np.ndarray, dict[str, int]]:
        """The decoded image `file_name` of the image directory, and `clean_boxes(boxes)` in it (boxes, kept
        index, event counts)."""
        image = open_image(self.image_dir / file_name, key, self.max_image_pixels)
        return (image, *clean_boxes(boxes, image.width, image.height, self.box_policy))

    def stream(self, start: int, seed: int) -> Iterator[int]:
        count = len(self)
        if count == 0:
            raise ValueError(f"data source '{self.name}' has no samples")
        epoch, offset = divmod(start, count)
        while True:
            order = epoch_order(count, seed, self.name, epoch, self.shuffle)
            yield from order[offset:]
            epoch, offset = epoch + 1, 0

    def materialize(self, item: int, rng: random.Random) -> GroundingExample:
        return self.load(item, rng)


class ImageRecordSource(IndexedSource):
    """An IndexedSource over `self.images`: records with `image_id`, `file_name` and `boxes` (COCO detection,
    MDETR grounding). Subclasses fill `images` and turn a record's image and kept boxes into an `example`."""

    images: list

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int, rng: random.Random) -> GroundingExample:
        record = self.images[index]
        key = str(record.image_id)
        image, boxes, kept, events = self.image_and_boxes(record.file_name, key, record.boxes)
        return self.example(record, key, image, boxes, kept, events, rng)

    def example(self, record: Any, key: str, image: Image.Image, boxes: np.ndarray, kept: np.ndarray,
                events: dict[str, int], rng: random.Random) -> GroundingExample:
        """The example of `record` given its decoded image and the boxes kept (`kept` indexes record.boxes)."""
        raise NotImplementedError
