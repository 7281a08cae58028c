"""Several training sources mixed by ratio (`--mix gold=1,pseudo=3`), each read as its own stream.

The interleaving is a fixed, smooth weighted round-robin over integer weights (gold=1,pseudo=3 gives
P G P P | P G P P ...), so sample g of the mixture is always the same source and the same position in it,
and the mixture can start at any g without reading what came before.
"""

from __future__ import annotations

from fractions import Fraction
from math import gcd, lcm
from typing import Any, Iterator, Mapping, Sequence

from glipkit.data.source import ExampleSource


def parse_mix(text: str) -> dict[str, float]:
    """`gold=1,pseudo=3` -> {"gold": 1.0, "pseudo": 3.0}; ValueError naming the bad part."""
    ratios: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if not sep or not name.strip() or ratio <= 0:
            raise ValueError(f"--mix part {part!r} must be NAME=POSITIVE_NUMBER, e.g. gold=1,pseudo=3")
        ratios[name.strip()] = ratio
    if not ratios:
        raise ValueError("--mix names no source")
    return ratios


def integer_weights(ratios: Sequence[float]) -> list[int]:
    """Smallest integer weights with the given ratios (ratios rounded to 1/100)."""
    fractions = [Fraction(r).limit_denominator(100) for r in ratios]
    scale = lcm(*(f.denominator for f in fractions))
    weights = [int(f * scale) for f in fractions]
    common = gcd(*weights)
    return [w // common for w in weights]


def round_robin_pattern(weights: Sequence[int]) -> list[int]:
    """One cycle of smooth weighted round-robin: source i appears weights[i] times, spread out."""
    total = sum(weights)
    current = [0] * len(weights)
    pattern = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        pick = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[pick] -= total
        pattern.append(pick)
    return pattern


class SourceMixture:
    """Sources and their ratios; sample g of the mixture comes from source `pattern[g % cycle]`."""

    def __init__(self, sources: Sequence[ExampleSource], ratios: Sequence[float] | None = None) -> None:
        if not sources:
            raise ValueError("training needs at least one data source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data source names must differ, got {names}")
        ratios = list(ratios) if ratios is not None else [1.0] * len(sources)
        if len(ratios) != len(sources) or any(r <= 0 for r in ratios):
            raise ValueError("one positive ratio per source")
        self.sources = list(sources)
        self.weights = integer_weights(ratios)
        self.pattern = round_robin_pattern(self.weights)
        self._before = [[self.pattern[:r].count(s) for r in range(len(self.pattern))] for s in range(len(sources))]

    @classmethod
    def from_mix(cls, sources: Mapping[str, ExampleSource], mix: Mapping[str, float] | None) -> "SourceMixture":
        """Sources by name and `parse_mix` ratios (every source needs one; None = equal ratios)."""
        if mix is None:
            return cls(list(sources.values()))
        unknown = sorted(set(mix) - set(sources))
        if unknown:
            raise ValueError(f"--mix names {unknown}, but the sources are {sorted(sources)}")
        missing = sorted(set(sources) - set(mix))
        if missing:
            raise ValueError(f"--mix gives no ratio for {missing}")
        return cls([sources[n] for n in mix], [mix[n] for n in mix])

    def locate(self, index: int) -> tuple[int, int]:
        """(source index, position in that source) of mixture sample `index`."""
        cycle, rest = divmod(index, len(self.pattern))
        source = self.pattern[rest]
        return source, cycle * self.weights[source] + self._before[source][rest]

    def positions(self, index: int) -> dict[str, int]:
        """How many samples of each source come before mixture sample `index`."""
        cycle, rest = divmod(index, len(self.pattern))
        return {s.name: cycle * self.weights[i] + self.pattern[:rest].count(i) for i, s in enumerate(self.sources)}

    def stream(self, start: int, seed: int) -> Iterator[tuple[int, int, Any]]:
        """(source index, position, item) for mixture samples start, start+1, ..."""
        before = self.positions(start)
        streams = [s.stream(before[s.name], seed) for s in self.sources]
        counters = [before[s.name] for s in self.sources]
        index = start
        while True:
            source = self.pattern[index % len(self.pattern)]
            item = next(streams[source])
            yield source, counters[source], item
            counters[source] += 1
            index += 1
