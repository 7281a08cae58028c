"""What an evaluation run hands back and writes: the run's numbers, metrics.json, the records files, the warnings.

Every file is written atomically (a hidden temporary name, then a rename), so a file that exists is always whole
and two runs into one directory never share a temporary file. If a run stops early (Ctrl-C, an error), the
records made so far are written to a `.partial.json` file.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from glipkit import __version__
from glipkit.engine.evaluation.loop import LoopStats, RunSettings
from glipkit.files import atomic_path, write_json_atomic
from glipkit.text.vocabulary import ClassVocabulary


@dataclass
class BenchmarkRun:
    """The outcome of one benchmark run: headline numbers, the metric object, and what was written where."""

    benchmark: str
    metrics: dict[str, float]
    result: Any  # CocoEvalResult | LvisEvalResult | FlickrRecallResult
    num_images: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)  # the metrics.json content


@dataclass
class OdinwRun:
    """Per-dataset runs and the average AP over the datasets whose AP is defined."""

    runs: dict[str, BenchmarkRun]
    average_ap: float
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ files


def output_dir(out_dir: str | Path | None) -> Path | None:
    """The run's output directory, created; None when the run writes nothing."""
    if out_dir is None:
        return None
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: Any) -> Path:
    """Write `payload` as indented json (numpy values as numbers), atomically."""
    return write_json_atomic(path, payload, default=_json_default)


def write_records(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write a json list one record per line (atomically), streaming, for detection files of millions of boxes."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write("[")
        for i, rec in enumerate(records):
            f.write(",\n" if i else "\n")
            f.write(json.dumps(rec, default=_json_default))
        f.write("\n]\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def partial_records_on_failure(out_dir: Path | None, name: str, records: Callable[[], Iterable[Mapping[str, Any]]]):
    """If the body raises (or is interrupted), write what was made so far to `out_dir/name`, then re-raise."""
    try:
        yield
    except BaseException:
        if out_dir is not None:
            with contextlib.suppress(Exception):
                write_records(out_dir / name, records())
        raise


@contextlib.contextmanager
def collect_warnings(notes: list[str]):
    """Python warnings raised inside become entries of `notes` (the run reports them once, in order)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        message = str(w.message)
        if issubclass(w.category, UserWarning) and message not in notes:
            notes.append(message)


# ------------------------------------------------------------------------------------------------ report


def protocol_notes(settings: RunSettings, stats: LoopStats, vocabulary: ClassVocabulary | None,
                   official_batch: int = 1) -> list[str]:
    """Warnings about how far a run strays from the official protocol, and about what it could not score."""
    notes = []
    if settings.batch_size != official_batch:
        notes.append(
            f"batch size {settings.batch_size}: padding to the batch's largest image changes GLIP's outputs slightly "
            f"(§1.1.7), so these numbers are approximate; the official protocol runs batch {official_batch}"
        )
    if stats.failed:
        notes.append(f"{len(stats.failed)} image(s) could not be read and count as having no detections "
                     f"(listed under failed_images in metrics.json), e.g. {stats.failed[0]['reason']}")
    if stats.unmapped_labels:
        if vocabulary is not None:
            names = [vocabulary.names[i] for i in sorted(stats.unmapped_labels)]
            notes.append(f"{len(names)} class(es) fell beyond the token limit (256) of their prompt chunk and were "
                         f"never scored, e.g. {names[:5]}; use a smaller --chunk-size")
        else:
            notes.append(f"{len(stats.unmapped_labels)} phrase(s) fell beyond the token limit and were never scored")
    if stats.size_mismatches:
        notes.append(f"{stats.size_mismatches} image file(s) differ in size from their annotation record; their "
                     "boxes were scaled to the annotated size, as the official evaluation does")
    return notes


def finish_run(benchmark: str, metrics: dict[str, float], result: Any, notes: list[str], start: float,
               meta: Mapping[str, Any], protocol: str, out_dir: Path | None, settings: RunSettings | None = None,
               stats: LoopStats | None = None, records_file: str | None = None,
               records: Iterable[Mapping[str, Any]] = (), extra: Mapping[str, Any] | None = None) -> BenchmarkRun:
    """The BenchmarkRun of a scored run with its metrics.json content; with `out_dir`, the records (when the run
    made them, to `records_file`) and metrics.json are written there."""
    seconds = time.perf_counter() - start
    run = BenchmarkRun(benchmark, metrics, result, result.num_images if stats is None else stats.num_images,
                       [] if stats is None else stats.failed, notes, seconds=seconds)
    report: dict[str, Any] = {"benchmark": benchmark, "glipkit_version": __version__, "protocol": protocol, **meta}
    if settings is not None:
        report["settings"] = settings.to_dict()
    if stats is not None:
        report["settings"]["precision"] = stats.precision or settings.precision
        if stats.chunk_size:
            report["settings"]["chunk_size"] = stats.chunk_size
            report["prompts"] = stats.prompts
        report["num_images"] = stats.num_images
        report["failed_images"] = stats.failed
    report.update(extra or {})
    report.update({k: v for k, v in result.to_dict().items() if k != "warnings"})
    report["warnings"] = list(notes)
    report["seconds"] = round(seconds, 3)
    run.report = report
    if out_dir is not None:
        if records_file is not None:
            run.files[Path(records_file).stem] = str(write_records(out_dir / records_file, records))
        run.files["metrics"] = str(write_json(out_dir / "metrics.json", report))
    return run
