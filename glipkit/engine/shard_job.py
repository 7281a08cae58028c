"""The skeleton of a shard job (extract-phrases, pseudo-label): one output file per input, written atomically.

Shared by both jobs: the status of an input, its ShardResult, the run's JobReport, skipping inputs whose output
exists (and removing what a killed run left half-written), the rule for a damaged input, and `_stats.json`.

Statistics: each input's entry goes to `<out>/_stats/shards/<stem>.json` (atomically), written by the process that
did the input before its output is renamed into place, so a finished output always has its entry. One process
(the parent, or rank 0) folds the entries into `<out>/_stats.json`: no file has two writers, so nothing races, on
any filesystem, across ranks and nodes, without locks.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from glipkit import __version__
from glipkit.data.shards import ShardReadError, shard_stem
from glipkit.errors import GlipkitUsageError
from glipkit.files import TEMPORARY_MARK, is_temporary_of, read_json, write_json_atomic

# ShardResult.status values
DONE = "done"  # read to the end, output written
PARTIAL = "partial"  # damaged part-way: the output holds the samples before the damage
UNREADABLE = "unreadable"  # nothing readable (missing, not a tar, damaged in the first sample): no output
EXISTS = "exists"  # output already there (resume), not redone
FAILED = "failed"  # the job itself failed on this input: no output, reported, exit code 1

STATS_FILE = "_stats.json"
STATS_DIR = "_stats"
MAX_SKIPPED_KEYS = 100  # per input
MAX_DETAIL_CHARS = 300


@dataclass
class Skips:
    """Samples of one input that were not written: how many for each reason, and the first keys with theirs."""

    by_reason: Counter = field(default_factory=Counter)
    keys: list[dict[str, str]] = field(default_factory=list)  # {"key", "reason"[, "detail"]}, at most MAX_SKIPPED_KEYS

    def add(self, key: str, reason: str, detail: str | None = None) -> None:
        self.by_reason[reason] += 1
        if len(self.keys) < MAX_SKIPPED_KEYS:
            entry = {"key": key, "reason": reason}
            if detail is not None:
                entry["detail"] = detail[:MAX_DETAIL_CHARS]
            self.keys.append(entry)

    def __len__(self) -> int:
        return sum(self.by_reason.values())


@dataclass
class ShardResult:
    """What happened to one input in this run."""

    input: str
    status: str
    output: str | None = None
    read: int = 0  # samples met, good or bad
    written: int = 0
    skips: Skips = field(default_factory=Skips)
    counts: dict[str, int] = field(default_factory=dict)  # the job's own totals, e.g. phrases or boxes
    error: str | None = None
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return len(self.skips)

    @property
    def skipped_keys(self) -> list[dict[str, str]]:
        return self.skips.keys


@dataclass
class JobReport:
    """The results of this process (this rank) and, on the process that merged them, the `_stats.json` content."""

    results: list[ShardResult]
    seconds: float
    out_dir: Path
    rank: int = 0
    world_size: int = 1
    stats: dict | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[ShardResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def read(self) -> int:
        return sum(r.read for r in self.results)

    @property
    def written(self) -> int:
        return sum(r.written for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.results)

    def total(self, name: str) -> int:
        """The sum of a job count (e.g. "boxes") over the results."""
        return sum(r.counts.get(name, 0) for r in self.results)

    @property
    def read_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------- outputs


def output_paths(out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], suffix: str) -> list[Path]:
    """`<out_dir>/<input stem><suffix>` for each input; two inputs that would write one file are a usage error."""
    outputs = [Path(out_dir) / f"{shard_stem(p)}{suffix}" for p in inputs]
    first: dict[Path, str | os.PathLike] = {}
    for inp, out in zip(inputs, outputs):
        if out in first:
            raise GlipkitUsageError(f"inputs {first[out]} and {inp} would both write {out}; give them distinct names")
        first[out] = inp
    return outputs


def skip_finished(inputs: Sequence[str], outputs: Sequence[Path], overwrite: bool) -> tuple[dict[int, ShardResult],
                                                                                             list[int]]:
    """EXISTS results (by index) of the inputs whose output is there (all are redone with `overwrite`), and the
    indices of the inputs to do; what a killed run left half-written for those is removed."""
    finished: dict[int, ShardResult] = {}
    todo: list[int] = []
    for i, (inp, out) in enumerate(zip(inputs, outputs)):
        if out.exists() and not overwrite:
            finished[i] = ShardResult(str(inp), EXISTS, str(out))
        else:
            todo.append(i)
    if todo:
        out_dir = outputs[todo[0]].parent
        _remove_temporaries([outputs[i] for i in todo] + [stats_entry_path(out_dir, inputs[i]) for i in todo])
    return finished, todo


def _remove_temporaries(paths: Iterable[Path]) -> None:
    # Hidden temporary files of a killed run, never read by anything; one directory listing per directory.
    by_directory: dict[Path, dict[str, Path]] = {}
    for path in paths:
        by_directory.setdefault(path.parent, {})[path.name] = path
    for directory, targets in by_directory.items():
        if not directory.is_dir():
            continue
        for candidate in directory.iterdir():
            name = candidate.name
            if name.startswith(".") and TEMPORARY_MARK in name:
                target = targets.get(name[1 : name.rindex(TEMPORARY_MARK)])
                if target is not None and is_temporary_of(candidate, target):
                    candidate.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ damaged input


def stopped_reading(error: ShardReadError, read: int, skip: Callable[[int, str, str], None]) -> tuple[str, int]:
    """An input whose reading stopped at `error` after `read` samples: the sample being read, if any, counts as
    read and skipped (`skip(index, key, detail)`). Returns (PARTIAL when a sample came before the damage, else
    UNREADABLE; the samples read)."""
    status = PARTIAL if read > 0 else UNREADABLE
    if error.key is not None:
        skip(read, error.key, error.reason)
        read += 1
    return status, read


# ---------------------------------------------------------------------------------------------------- _stats.json


def stats_entry_path(out_dir: str | os.PathLike, input_path: str | os.PathLike) -> Path:
    """Where the `_stats.json` entry of one input waits to be merged: `<out>/_stats/shards/<stem>.json`."""
    return Path(out_dir) / STATS_DIR / "shards" / f"{shard_stem(input_path)}.json"


def read_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of `<out_dir>/_stats.json`, or an empty stats dict when there is none yet."""
    path = Path(out_dir) / STATS_FILE
    stats = read_json(path, "stats file") if path.exists() else {}
    stats.setdefault("shards", {})
    return stats


class StatsWriter:
    """Writes each input's entry as it finishes, and (on the main process) folds the entries of `inputs` into
    `_stats.json`: every `interval_s` while running, and when asked at the end.

    `header` fields replace top-level fields; `totals` sums the entries' counts; `summary`, if given, computes
    a `summary` field from the entries by stem.
    """

    def __init__(self, out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], header: Mapping[str, Any],
                 *, main: bool = True, interval_s: float = 10.0,
                 summary: Callable[[dict[str, dict]], dict] | None = None):
        self.out_dir = Path(out_dir)
        self.inputs = list(inputs)
        self.header = dict(header)
        self.main = main
        self.interval_s = interval_s
        self.summary = summary
        self._last_merge = 0.0

    def write(self, input_path: str | os.PathLike, entry: Mapping[str, Any]) -> None:
        """Write one input's entry (atomically; raises on a write error)."""
        write_json_atomic(stats_entry_path(self.out_dir, input_path), dict(entry))

    def merge_if_due(self) -> None:
        if self.main and time.perf_counter() - self._last_merge >= self.interval_s:
            self.merge()

    def merge(self) -> dict[str, Any]:
        """Fold the entries into `_stats.json` and return its content (entries of earlier runs are kept)."""
        entries = {}
        for inp in self.inputs:
            try:
                entries[shard_stem(inp)] = read_json(stats_entry_path(self.out_dir, inp), "stats entry")
            except (OSError, ValueError):
                continue
        stats = read_stats(self.out_dir)
        stats["glipkit_version"] = __version__
        stats.update(self.header)
        if self.summary is not None:
            stats["summary"] = self.summary(entries)
        stats["shards"] = dict(sorted({**stats["shards"], **entries}.items()))
        stats["totals"] = _totals(stats["shards"].values())
        write_json_atomic(self.out_dir / STATS_FILE, stats)
        self._last_merge = time.perf_counter()
        return stats


def _totals(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Integer fields summed, `*_by_reason` counts merged, shards counted by status."""
    totals: dict[str, Any] = {"shards": 0}
    for entry in entries:
        totals["shards"] += 1
        for name, value in entry.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                totals[name] = totals.get(name, 0) + value
            elif isinstance(value, dict) and name.endswith("_by_reason"):
                bucket = totals.setdefault(name, {})
                for reason, n in value.items():
                    bucket[reason] = bucket.get(reason, 0) + n
        status = entry.get("status")
        if status:
            by_status = totals.setdefault("shards_by_status", {})
            by_status[status] = by_status.get(status, 0) + 1
    return totals
