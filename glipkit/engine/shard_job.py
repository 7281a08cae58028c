"""The skeleton of a shard job (extract-phrases, pseudo-label): one output file per input, written atomically.

Shared by both jobs: the status of an input, its ShardResult, the run's JobReport, the resume rule, per-input
claims (engine/claims.py), the rule for a damaged input, and the stats file.

Resume: an input is done only when its output's metadata says this command wrote it from this input (resolved
path or URL) with the same settings; any other file under that name (another command, model or settings, a
foreign file) stops the run with one line naming the difference, unless `--overwrite`. Several runs on one output
folder claim each input before working on it and wait for the inputs other runs hold (`claimed_rounds`).

Statistics: each input's entry goes to `<out>/_stats/<command>/<stem>.json`, written by the process that did the
input before its output appears, so a finished output always has its entry. The main process (the parent, or
rank 0) folds the entries into `<out>/_stats.json` (`_stats.<command>.json` when another command's stats hold
that name in a shared folder).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from glipkit import __version__
from glipkit.data.shards import ShardReadError, shard_stem, shard_url
from glipkit.data.tables import read_metadata
from glipkit.engine.claims import Claims
from glipkit.engine.output_dir import OutputDir
from glipkit.errors import GlipkitUsageError
from glipkit.files import TEMPORARY_MARK, is_temporary_of

# ShardResult.status values
DONE = "done"  # read to the end, output written
PARTIAL = "partial"  # damaged part-way: the output holds the samples before the damage
UNREADABLE = "unreadable"  # nothing readable (missing, not a tar, damaged in the first sample): no output
EXISTS = "exists"  # output already there (resume), not redone
FAILED = "failed"  # the job itself failed on this input: no output, reported, exit code 1

STATS_FILE = "_stats.json"
STATS_DIR = "_stats"
POLL_S = 1.0  # how often a run waiting for inputs that other runs hold looks again
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
    out_dir: str | os.PathLike
    rank: int = 0
    world_size: int = 1
    stats: dict | None = None
    stats_path: str | None = None  # the stats file this process merged into, if any

    @property
    def not_done(self) -> list[ShardResult]:
        """Inputs that were not read to their end or whose output could not be written: the exit code is 1."""
        return [r for r in self.results if r.status in (FAILED, UNREADABLE, PARTIAL)]

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


def output_names(out: OutputDir, inputs: Sequence[str], suffix: str) -> list[str]:
    """`<input stem><suffix>` for each input; two inputs that would write one file are a usage error."""
    names = [f"{shard_stem(p)}{suffix}" for p in inputs]
    first: dict[str, str] = {}
    for inp, name in zip(inputs, names):
        if name in first:
            raise GlipkitUsageError(f"inputs {first[name]} and {inp} would both write {out.path(name)}; give them "
                                    "distinct names")
        first[name] = inp
    return names


def settings_differences(recorded: Any, expected: Any, prefix: str = "") -> list[str]:
    """`name: recorded here expected` for each expected setting that the recorded settings lack or hold another
    value for; dicts are compared key by key, only on the keys `expected` has."""
    if isinstance(expected, Mapping):
        if not isinstance(recorded, Mapping):
            return [f"{prefix or 'settings'}: {recorded!r} here {dict(expected)!r}"]
        out: list[str] = []
        for key, value in expected.items():
            out.extend(settings_differences(recorded.get(key, _MISSING), value, f"{prefix}{key}."))
        return out
    if recorded is _MISSING:
        return [f"{prefix.rstrip('.')}: not recorded"]
    if isinstance(expected, (list, tuple)) and isinstance(recorded, (list, tuple)):
        recorded, expected = list(recorded), list(expected)
    return [] if recorded == expected else [f"{prefix.rstrip('.')}: {recorded!r} here {expected!r}"]


_MISSING = object()


def _why_not_done(meta: Mapping[str, Any] | None, command: str, expected: Mapping[str, Any], input: str) -> str | None:
    if meta is None or meta.get("command") is None:
        return f"not written by glipkit {command}"
    if meta["command"] != command:
        return f"written by glipkit {meta['command']}, not {command}"
    recorded = meta.get("settings") or {}
    if recorded.get("input") is not None and shard_url(recorded["input"]) != input:
        return f"made from another input, {recorded['input']}"
    differences = settings_differences(recorded, expected)
    return f"other settings ({'; '.join(differences)})" if differences else None


def table_done(out: OutputDir, name: str, command: str, expected: Mapping[str, Any], input: str) -> str | None:
    """None when `name` in `out` is a table that `command` wrote from `input` with the `expected` settings;
    else why not."""
    try:
        with out.open(name) as handle:
            meta = read_metadata(handle)
    except Exception as e:  # noqa: BLE001 - a foreign or damaged file is not done
        return f"unreadable as a glipkit table ({type(e).__name__}: {e})"
    return _why_not_done(meta, command, expected, input)


def plan_outputs(out: OutputDir, inputs: Sequence[str], names: Sequence[str], command: str,
                 expected: Mapping[str, Any], overwrite: bool, legacy_suffix: str | None = None
                 ) -> tuple[dict[int, ShardResult], list[int]]:
    """EXISTS results (by index) of the inputs whose output `command` wrote with the `expected` settings, and the
    indices of the inputs to do. An output written otherwise (another command, model, settings or input, or a
    foreign file) is a usage error naming the differences, unless `overwrite` (then everything is redone).
    `legacy_suffix`: a table of `command` under `<stem><legacy_suffix>` (an older glipkit's name) is a usage error
    telling to rename it."""
    if overwrite:
        return {}, list(range(len(inputs)))
    present = out.names()
    finished: dict[int, ShardResult] = {}
    todo: list[int] = []
    mismatched: list[tuple[str, str]] = []
    for i, (inp, name) in enumerate(zip(inputs, names)):
        if name in present:
            why = table_done(out, name, command, expected, inp)
            if why is None:
                finished[i] = ShardResult(inp, EXISTS, out.path(name))
                continue
            mismatched.append((name, why))
        elif legacy_suffix is not None and (old := f"{shard_stem(inp)}{legacy_suffix}") in present:
            if _written_by(out, old, command):
                raise GlipkitUsageError(
                    f"{out.path(old)} is a {command} table under the old name; rename it to {name} (tables are now "
                    f"named <shard>{names[i][len(shard_stem(inp)):]}) to keep it, or pass --overwrite to redo it")
        todo.append(i)
    if mismatched:
        name, why = mismatched[0]
        more = f"; {len(mismatched) - 1} more tables differ" if len(mismatched) > 1 else ""
        raise GlipkitUsageError(f"{out.path(name)} exists but is not this run's: {why}{more}. Pass --overwrite to "
                                "redo them, or choose another --out")
    return finished, todo


def _written_by(out: OutputDir, name: str, command: str) -> bool:
    try:
        with out.open(name) as handle:
            return read_metadata(handle).get("command") == command
    except Exception:  # noqa: BLE001 - e.g. img2dataset's own parquet: not ours
        return False


def claimed_rounds(out: OutputDir, claims: Claims, inputs: Sequence[str], names: Sequence[str], todo: Sequence[int],
                   command: str, expected: Mapping[str, Any], results: dict[int, ShardResult],
                   overwrite: bool = False, poll_s: float = POLL_S) -> Iterator[list[int]]:
    """Rounds of the `todo` inputs this run claimed, to be done by the caller before the next round is asked for.
    First every input nobody holds; then, as other runs release theirs, those they left undone (or whose claim
    went stale). An input another run finished meanwhile gets an EXISTS result in `results` (unless `overwrite`:
    then it is redone). What a crashed run
    left half-written for a claimed input is removed."""
    claims.remove_stale([names[i] for i in results])
    pending = list(todo)
    while pending:
        mine, waiting = [], []
        for i in pending:
            if claims.acquire(names[i]) is not None:
                waiting.append(i)
                continue
            if not overwrite and out.exists(names[i]):  # finished by another run since the plan
                why = table_done(out, names[i], command, expected, inputs[i])
                claims.release(names[i])
                results[i] = ShardResult(inputs[i], EXISTS if why is None else FAILED, out.path(names[i]),
                                         error=None if why is None else f"written meanwhile by another run: {why}")
                continue
            mine.append(i)
        if mine:
            remove_temporaries(out, [names[i] for i in mine] + [stats_entry_name(command, inputs[i]) for i in mine])
            yield mine
        elif waiting:
            time.sleep(poll_s)
        pending = waiting


def remove_temporaries(out: OutputDir, names: Iterable[str]) -> None:
    """Remove the hidden temporary files of `names` that a killed run left (local folders only; call it only for
    outputs whose claim this run holds)."""
    if not out.is_local:
        return  # remote outputs are uploaded whole from a local temporary file
    by_directory: dict[Path, dict[str, Path]] = {}
    for name in names:
        path = out.local_path(name)
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


def stats_entry_name(command: str, input_path: str | os.PathLike) -> str:
    """Where the `_stats.json` entry of one input waits to be merged: `_stats/<command>/<stem>.json` (per
    command, so that extract-phrases and pseudo-label can share a folder)."""
    return f"{STATS_DIR}/{command}/{shard_stem(input_path)}.json"


def stats_file_name(out: OutputDir, command: str | None) -> str:
    """`_stats.json`, unless another command's stats hold that name in a shared folder: `_stats.<command>.json`."""
    if command is None or STATS_FILE not in out.names():
        return STATS_FILE
    try:
        owner = out.read_json(STATS_FILE, "stats file").get("command")
    except (OSError, ValueError, AttributeError):
        owner = None
    return STATS_FILE if owner in (None, command) else f"_stats.{command}.json"


def read_stats(out_dir: str | os.PathLike | OutputDir, command: str | None = None) -> dict[str, Any]:
    """The content of the stats file of `command` in `out_dir` (`_stats.json`), or an empty stats dict."""
    out = out_dir if isinstance(out_dir, OutputDir) else OutputDir(out_dir)
    name = stats_file_name(out, command)
    stats = out.read_json(name, "stats file") if out.exists(name) else {}
    stats.setdefault("shards", {})
    return stats


class StatsWriter:
    """Writes each input's entry as it finishes, and (on the main process) folds the entries of `inputs` into
    the stats file (`_stats.json`): every `interval_s` while running, and when asked at the end.

    `header` fields (with `command`) replace top-level fields; `totals` sums the entries' counts; `summary`, if
    given, computes a `summary` field from the entries by stem.
    """

    def __init__(self, out_dir: str | os.PathLike | OutputDir, inputs: Sequence[str | os.PathLike],
                 header: Mapping[str, Any], *, main: bool = True, interval_s: float = 10.0,
                 summary: Callable[[dict[str, dict]], dict] | None = None):
        self.out = out_dir if isinstance(out_dir, OutputDir) else OutputDir(out_dir)
        self.inputs = list(inputs)
        self.header = dict(header)
        self.command = str(self.header.get("command", "job"))
        self.main = main
        self.interval_s = interval_s
        self.summary = summary
        self.file_name = stats_file_name(self.out, self.command) if main else STATS_FILE
        self._last_merge = 0.0

    @property
    def path(self) -> str:
        return self.out.path(self.file_name)

    def write(self, input_path: str | os.PathLike, entry: Mapping[str, Any]) -> None:
        """Write one input's entry (atomically; raises on a write error)."""
        self.out.write_json(stats_entry_name(self.command, input_path), dict(entry))

    def merge_if_due(self) -> None:
        if self.main and time.perf_counter() - self._last_merge >= self.interval_s:
            self.merge()

    def merge(self) -> dict[str, Any]:
        """Fold the entries into the stats file and return its content (entries of earlier runs are kept)."""
        present = self.out.names(f"{STATS_DIR}/{self.command}")
        entries = {}
        for inp in self.inputs:
            name = stats_entry_name(self.command, inp)
            if name.rsplit("/", 1)[-1] not in present:
                continue
            try:
                entries[shard_stem(inp)] = self.out.read_json(name, "stats entry")
            except (OSError, ValueError):
                continue
        stats = read_stats(self.out, self.command)
        stats["glipkit_version"] = __version__
        stats.update(self.header)
        if self.summary is not None:
            stats["summary"] = self.summary(entries)
        stats["shards"] = dict(sorted({**stats["shards"], **entries}.items()))
        stats["totals"] = _totals(stats["shards"].values())
        self.out.write_json(self.file_name, stats)
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
