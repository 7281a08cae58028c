"""What a training data source is: a deterministic, endless, resumable stream of examples.

A source is read by position: position p of a source is always the same sample with the same augmentation
randomness, whatever process, DataLoader worker or resumed run reads it. That is what makes `--resume` exact
and 1-process and N-process runs equal. `stream(start, seed)` yields cheap items (annotations, maybe raw
bytes) for positions start, start+1, ... over as many epochs as asked; `materialize(item, rng)` turns one into a
GroundingExample (decoding the image) and raises BadSample for a sample that cannot be used.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Protocol

from glipkit.data.grounding_example import GroundingExample


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
    """Base of sources whose samples can be read in any order (annotation files + image directory).

    Subclasses set `name` and implement `__len__` and `load(index, rng)`; epochs visit the samples in a
    seeded permutation (`shuffle=False`: file order).
    """

    name: str = "indexed"
    shuffle: bool = True

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, rng: random.Random) -> GroundingExample:
        raise NotImplementedError

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
