"""What pseudo-label counts per shard (its `_stats.json` entry) and the summary that rank 0 adds to `_stats.json`.

Entries are written and merged by the shard-job skeleton (engine/shard_job.py). Besides them, each rank writes
`<out>/_stats/ranks/rank-NNNNN.json` at the end of its run, from which the summary takes the run's throughput.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterable, Mapping

from glipkit.engine.output_dir import OutputDir
from glipkit.engine.shard_job import STATS_DIR, Skips

TOP_PHRASES_PER_SHARD = 50
TOP_PHRASES = 100
SCORE_BIN = 0.05


def rank_stats_path(rank: int) -> str:
    """The name, in the output folder, of a rank's run record."""
    return f"{STATS_DIR}/ranks/rank-{rank:05d}.json"


def _score_bin(score: float) -> str:
    index = min(int(score / SCORE_BIN), int(round(1 / SCORE_BIN)) - 1)
    return f"{index * SCORE_BIN:.2f}"


class ShardStats:
    """Counts for one shard, fed row by row and failure by failure."""

    def __init__(self, shard: str, rank: int):
        self.shard = shard
        self.rank = rank
        self.written = 0
        self.labelled = 0
        self.boxes = 0
        self.phrases = 0
        self.phrases_beyond_token_limit = 0
        self.images_flagged = 0
        self.failed = Skips()
        self.flagged_by_reason: Counter[str] = Counter()
        self.boxes_per_image: Counter[int] = Counter()
        self.phrases_per_image: Counter[int] = Counter()
        self.scores: Counter[str] = Counter()
        self.top_phrases: Counter[str] = Counter()  # images in which the phrase got at least one box
        self.phrase_images: Counter[str] = Counter()  # images whose phrases include it

    def add_row(self, row: Mapping[str, Any], labelled: bool, beyond_limit: int = 0) -> None:
        """Count a written row (`labelled`: it went through the model)."""
        self.written += 1
        self.labelled += labelled
        boxes = row["boxes"]
        self.boxes += len(boxes)
        self.boxes_per_image[len(boxes)] += 1
        self.phrases += len(row["phrases"])
        self.phrases_per_image[len(row["phrases"])] += 1
        self.phrases_beyond_token_limit += beyond_limit
        flags = row.get("flags") or ()
        self.images_flagged += bool(flags)
        for flag in flags:
            self.flagged_by_reason[flag] += 1
        grounded = set()
        for box in boxes:
            self.scores[_score_bin(box["score"])] += 1
            grounded.add(box["phrase"])
        for index in grounded:
            self.top_phrases[row["phrases"][index]["text"].lower()] += 1
        self.phrase_images.update({phrase["text"].lower() for phrase in row["phrases"]})

    def add_failure(self, key: str, reason: str, detail: str = "") -> None:
        self.failed.add(key, reason, detail)

    def entry(self, status: str, read: int, output: str | None, error: str | None, seconds: float,
              image_pixels: int = 0, batch_pixels: int = 0) -> dict[str, Any]:
        """The shard's `_stats.json` entry. Integer fields are summed into `totals`; dicts are merged by rank 0."""
        return {
            "input": self.shard,
            "output": output,
            "status": status,
            "error": error,
            "read": read,
            "written": self.written,
            "labelled": self.labelled,
            "failed": len(self.failed),
            "boxes": self.boxes,
            "phrases": self.phrases,
            "phrases_beyond_token_limit": self.phrases_beyond_token_limit,
            "images_flagged": self.images_flagged,
            "failed_by_reason": dict(self.failed.by_reason),
            "flagged_by_reason": dict(self.flagged_by_reason),
            "failed_keys": self.failed.keys,
            "boxes_per_image_hist": {str(k): v for k, v in sorted(self.boxes_per_image.items())},
            "phrases_per_image_hist": {str(k): v for k, v in sorted(self.phrases_per_image.items())},
            "score_hist": dict(sorted(self.scores.items())),
            "top_phrases": dict(self.top_phrases.most_common(TOP_PHRASES_PER_SHARD)),
            # images having each phrase, for the grounding rate: the top phrases and the most frequent ones
            "phrase_images": {phrase: self.phrase_images[phrase] for phrase in dict.fromkeys(
                [p for p, _ in self.top_phrases.most_common(TOP_PHRASES_PER_SHARD)]
                + [p for p, _ in self.phrase_images.most_common(TOP_PHRASES_PER_SHARD)])},
            "run": {
                "rank": self.rank,
                "seconds": round(seconds, 3),
                "images_per_s": round(read / seconds, 3) if seconds > 0 else None,
                "boxes_per_s": round(self.boxes / seconds, 3) if seconds > 0 else None,
                "padding_fraction": round(1 - image_pixels / batch_pixels, 4) if batch_pixels else None,
                "image_pixels": image_pixels,
                "batch_pixels": batch_pixels,
            },
        }


def _merge_hist(entries: Iterable[Mapping], name: str, numeric_keys: bool) -> dict[str, int]:
    total: Counter = Counter()
    for entry in entries:
        total.update(entry.get(name) or {})
    keys = sorted(total, key=(lambda k: int(k)) if numeric_keys else (lambda k: float(k)))
    return {k: total[k] for k in keys}


def summary(entries: Mapping[str, Mapping], rank_runs: Iterable[Mapping]) -> dict[str, Any]:
    """Histograms and top phrases merged over shard entries, and the throughput of the last run over all ranks."""
    values = list(entries.values())
    phrases: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for entry in values:
        phrases.update(entry.get("top_phrases") or {})
        seen.update(entry.get("phrase_images") or {})
    written = sum(e.get("written", 0) for e in values)
    image_pixels = sum((e.get("run") or {}).get("image_pixels", 0) for e in values)
    batch_pixels = sum((e.get("run") or {}).get("batch_pixels", 0) for e in values)
    runs = list(rank_runs)
    seconds = max((r.get("seconds", 0.0) for r in runs), default=0.0)
    images = sum(r.get("images_read", 0) for r in runs)
    boxes = sum(r.get("boxes", 0) for r in runs)
    return {
        "boxes_per_image_hist": _merge_hist(values, "boxes_per_image_hist", True),
        "phrases_per_image_hist": _merge_hist(values, "phrases_per_image_hist", True),
        "score_hist": _merge_hist(values, "score_hist", False),
        "top_phrases": dict(phrases.most_common(TOP_PHRASES)),
        # of the images whose phrases include it, the share in which it got a box
        "top_phrases_grounding_rate": {p: round(n / seen[p], 4) for p, n in phrases.most_common(TOP_PHRASES)
                                       if seen[p]},
        "boxes_per_image": round(sum(e.get("boxes", 0) for e in values) / written, 4) if written else 0.0,
        "padding_fraction": round(1 - image_pixels / batch_pixels, 4) if batch_pixels else None,
        "last_run": {
            "ranks": len(runs),
            "images_read": images,
            "boxes": boxes,
            "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 3) if seconds > 0 else None,
            "boxes_per_s": round(boxes / seconds, 3) if seconds > 0 else None,
            "per_rank": runs,
        },
    }


def read_rank_runs(out_dir: str | os.PathLike | OutputDir, world_size: int) -> list[dict]:
    """The run records of ranks 0..world_size-1 (older files of higher ranks are ignored)."""
    out = out_dir if isinstance(out_dir, OutputDir) else OutputDir(out_dir)
    runs = []
    for rank in range(world_size):
        try:
            runs.append(out.read_json(rank_stats_path(rank), "rank stats"))
        except (OSError, ValueError):
            continue
    return runs
