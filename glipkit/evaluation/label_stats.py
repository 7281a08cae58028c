"""What a set of label rows looks like: histograms, the share kept at each score threshold, top phrases, flags.

Fed image by image (`LabelStats.add`), so one pass over a run of millions keeps only counters. Box sizes are
sqrt(box area / image area): 0.1 is a box a tenth of the image's side.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00, 0.05, ... 0.95
SCORE_BINS = np.linspace(0.0, 1.0, 21)
SIZE_BINS = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-6])
COUNT_BINS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)  # lower edges; the last bin is open
TOP_PHRASES = 30


def _count_bin(n: int) -> int:
    return max(i for i, edge in enumerate(COUNT_BINS) if n >= edge)


def _count_labels() -> list[str]:
    labels = []
    for i, edge in enumerate(COUNT_BINS):
        upper = COUNT_BINS[i + 1] - 1 if i + 1 < len(COUNT_BINS) else None
        labels.append(str(edge) if upper == edge else f"{edge}-{upper}" if upper is not None else f"{edge}+")
    return labels


@dataclass
class LabelStats:
    """Counters over images: add each image's scores, box sizes, phrase count and flags."""

    images: int = 0
    boxes: int = 0
    score_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, np.int64))
    size_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_BINS) - 1, np.int64))
    boxes_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(COUNT_BINS), np.int64))
    phrases_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(COUNT_BINS), np.int64))
    boxes_at: np.ndarray = field(default_factory=lambda: np.zeros(len(THRESHOLDS), np.int64))
    images_at: np.ndarray = field(default_factory=lambda: np.zeros(len(THRESHOLDS), np.int64))
    phrase_boxes: Counter = field(default_factory=Counter)
    phrase_scores: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)
    whole_image_boxes: int = 0  # boxes covering >= 90% of the image's area

    def add(self, scores: np.ndarray, sizes: np.ndarray, phrases: Sequence[str], box_phrases: Sequence[str],
            flags: Sequence[str] = ()) -> None:
        """One image: its box scores, box sizes (sqrt area fraction), phrases, each box's phrase, and flags."""
        scores = np.asarray(scores, np.float64)
        self.images += 1
        self.boxes += len(scores)
        self.score_hist += np.histogram(scores.clip(0, 1), SCORE_BINS)[0]
        self.size_hist += np.histogram(np.asarray(sizes, np.float64).clip(0, 1), SIZE_BINS)[0]
        self.whole_image_boxes += int((np.asarray(sizes) ** 2 >= 0.9).sum())
        self.boxes_hist[_count_bin(len(scores))] += 1
        self.phrases_hist[_count_bin(len(phrases))] += 1
        kept = (scores[None, :] >= np.array(THRESHOLDS)[:, None]).sum(axis=1)
        self.boxes_at += kept
        self.images_at += kept > 0
        for text, score in zip(box_phrases, scores.tolist()):
            self.phrase_boxes[text] += 1
            self.phrase_scores[text] += score
        self.flags.update(flags)

    def warnings(self) -> list[str]:
        """Plain-language signs of trouble."""
        out = []
        if self.images and self.images_at[0] / self.images < 0.5:
            out.append(f"{1 - self.images_at[0] / self.images:.0%} of images have no box")
        if self.boxes and self.whole_image_boxes / self.boxes > 0.2:
            out.append(f"{self.whole_image_boxes / self.boxes:.0%} of boxes cover nearly the whole image")
        if self.boxes >= 20 and self.phrase_boxes:
            text, n = self.phrase_boxes.most_common(1)[0]
            if n / self.boxes > 0.3:
                out.append(f"one phrase has {n / self.boxes:.0%} of all boxes: {text!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view: histograms as {bin label: count}, kept fractions by threshold."""
        edges = lambda bins: [f"{a:.2f}-{b:.2f}" for a, b in zip(bins[:-1], bins[1:])]  # noqa: E731
        counts = _count_labels()
        return {
            "images": self.images,
            "boxes": self.boxes,
            "boxes_per_image": round(self.boxes / self.images, 4) if self.images else 0.0,
            "score_hist": dict(zip(edges(SCORE_BINS), self.score_hist.tolist())),
            "box_size_hist": dict(zip(edges(np.minimum(SIZE_BINS, 1.0)), self.size_hist.tolist())),
            "boxes_per_image_hist": dict(zip(counts, self.boxes_hist.tolist())),
            "phrases_per_image_hist": dict(zip(counts, self.phrases_hist.tolist())),
            "kept_at_threshold": [
                {"threshold": t, "boxes": int(b), "box_fraction": round(b / self.boxes, 4) if self.boxes else 0.0,
                 "images_with_boxes": int(i), "image_fraction": round(i / self.images, 4) if self.images else 0.0}
                for t, b, i in zip(THRESHOLDS, self.boxes_at.tolist(), self.images_at.tolist())],
            "top_phrases": [{"phrase": text, "boxes": n, "mean_score": round(self.phrase_scores[text] / n, 4)}
                            for text, n in self.phrase_boxes.most_common(TOP_PHRASES)],
            "flags": dict(self.flags.most_common()),
            "warnings": self.warnings(),
        }
