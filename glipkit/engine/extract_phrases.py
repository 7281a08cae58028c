"""The extract-phrases job: captions of many shards -> one `<shard>.phrases.parquet` each, over N processes.

Each input (tar shard or caption file) is one task. A task reads its captions, runs the phrase extractor in
chunks (`nlp.pipe` batches inside), streams rows into an atomic Parquet writer and returns a ShardResult. Worker
processes load spaCy once. The parent only schedules, counts progress and merges `_stats.json` after each task,
so a killed job keeps every finished shard and its stats; a rerun skips shards whose output exists.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from glipkit.data.captions import expand_caption_files, iter_caption_records
from glipkit.data.shards import ShardReadError, expand_shards, shard_stem
from glipkit.data.tables import PHRASES_SCHEMA, PHRASES_SUFFIX, AtomicParquetWriter, phrases_table, update_stats
from glipkit.errors import GlipkitUsageError
from glipkit.text.phrases import EXTRACTORS, PhraseExtractor, PhraseOptions, get_extractor, lower_same_length
from glipkit.text.spacy_models import DEFAULT_SPACY_MODEL, resolve_spacy_model

COMMAND = "extract-phrases"
MAX_SKIPPED_KEYS = 100
DAMAGED = "truncated or corrupt input"  # skip reason of the sample being read when an input turned out damaged
EXTRACTOR_ERROR = "extractor error"  # skip reason of a caption the extractor raised on

# ShardResult.status values
DONE = "done"  # read to the end, output written
PARTIAL = "partial"  # input damaged part-way: output holds the samples before the damage
UNREADABLE = "unreadable"  # nothing readable (missing, not a tar, damaged in the first sample): no output
EXISTS = "exists"  # output already there (resume), not redone
FAILED = "failed"  # the job itself failed on this input: no output, reported, exit code 1


@dataclass
class ExtractPhrasesSettings:
    """What the job does to each caption and how it batches the work."""

    extractor: str = "spacy"
    options: PhraseOptions = field(default_factory=PhraseOptions)
    spacy_model: str = DEFAULT_SPACY_MODEL
    batch_size: int = 256  # captions per nlp.pipe batch
    chunk_size: int = 2048  # captions per extract call (and progress report)
    overwrite: bool = False
    allow_download: bool | None = None  # spaCy's downloader for a missing model; None: unless offline env


@dataclass
class ShardResult:
    """What happened to one input; becomes its `_stats.json` entry."""

    input: str
    output: str | None
    status: str
    read: int = 0  # samples met, good or bad
    written: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_keys: list[dict[str, str]] = field(default_factory=list)  # the first MAX_SKIPPED_KEYS
    phrases: int = 0
    phrases_per_caption: float = 0.0
    phrases_per_caption_hist: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return shard_stem(self.input)

    def stats_entry(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobProgress:
    """Sent to the progress callback: after each finished input and periodically while working."""

    shards_done: int
    shards_total: int
    captions: int  # captions processed so far in this run (good and skipped)
    elapsed_s: float
    finished: ShardResult | None = None  # the input that just finished, if any


@dataclass
class JobReport:
    """All results of one run."""

    results: list[ShardResult]
    seconds: float
    out_dir: Path

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[ShardResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def captions_written(self) -> int:
        return sum(r.written for r in self.results)

    @property
    def captions_read(self) -> int:
        return sum(r.read for r in self.results)

    @property
    def captions_skipped(self) -> int:
        return sum(r.skipped for r in self.results)

    @property
    def captions_per_second(self) -> float:
        return self.captions_read / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[JobProgress], None]


# ----------------------------------------------------------------------------------------------------------------
# Inputs and outputs


def resolve_inputs(shards: str | None = None, captions: str | None = None) -> list[Path]:
    """Inputs named by exactly one of a shard spec (`--shards`) or a caption-file spec (`--captions`)."""
    if (shards is None) == (captions is None):
        raise GlipkitUsageError("give exactly one of --shards SPEC or --captions FILE")
    return expand_shards(shards) if shards is not None else expand_caption_files(captions)  # type: ignore[arg-type]


def output_path(out_dir: str | os.PathLike, input_path: str | os.PathLike) -> Path:
    """`<out_dir>/<input stem>.phrases.parquet`."""
    return Path(out_dir) / f"{shard_stem(input_path)}{PHRASES_SUFFIX}"


def _check_unique_outputs(inputs: Sequence[Path], out_dir: Path) -> list[Path]:
    outputs = [output_path(out_dir, p) for p in inputs]
    first: dict[Path, Path] = {}
    for inp, out in zip(inputs, outputs):
        if out in first:
            raise GlipkitUsageError(f"inputs {first[out]} and {inp} would both write {out}; give them distinct names")
        first[out] = inp
    return outputs


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------------------
# One input


def process_input(
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    extractor: PhraseExtractor,
    settings: ExtractPhrasesSettings,
    on_captions: Callable[[int], None] | None = None,
) -> ShardResult:
    """Extract phrases for every caption of one input and write its table atomically; never raises for
    damaged input (status PARTIAL / UNREADABLE) or job errors (status FAILED, no output file)."""
    started = time.perf_counter()
    result = ShardResult(str(input_path), None, DONE)
    skipped_by_reason: Counter[str] = Counter()
    hist: Counter[int] = Counter()

    def skip(key: str, reason: str) -> None:
        result.skipped += 1
        skipped_by_reason[reason] += 1
        if len(result.skipped_keys) < MAX_SKIPPED_KEYS:
            result.skipped_keys.append({"key": key, "reason": reason})

    table_settings = {**extractor.settings(), "input": str(input_path)}
    try:
        with AtomicParquetWriter(out_path, PHRASES_SCHEMA, COMMAND, table_settings) as writer:
            records = iter_caption_records(input_path)
            keys: list[str] = []
            captions: list[str] = []

            def flush() -> None:
                nonlocal keys, captions
                try:
                    phrases = extractor.extract(captions, batch_size=settings.batch_size)
                except Exception:
                    keys, captions, phrases = _isolate_bad_captions(extractor, keys, captions, skip)
                source = captions
                if extractor.options.lowercase:
                    # Spans index the lowercased caption: store that one so caption[start:end] == text holds.
                    source = [lower_same_length(c) for c in captions]
                writer.write_table(phrases_table(keys, source, phrases))
                for ps in phrases:
                    hist[len(ps)] += 1
                    result.phrases += len(ps)
                result.written += len(captions)
                if on_captions is not None:
                    on_captions(len(captions))
                keys, captions = [], []

            try:
                for record in records:
                    result.read += 1
                    if record.caption is None:
                        skip(record.key, record.error or "no caption")
                        continue
                    keys.append(record.key)
                    captions.append(record.caption)
                    if len(captions) >= settings.chunk_size:
                        flush()
            except ShardReadError as e:
                result.error = str(e)
                if e.key is not None:
                    result.read += 1
                    skip(e.key, DAMAGED)
                result.status = PARTIAL if result.read - (e.key is not None) > 0 else UNREADABLE
            if captions:
                flush()
            if result.status == UNREADABLE:
                raise _NoOutput()
        result.output = str(out_path)
    except _NoOutput:
        pass
    except Exception as e:  # a job error (extractor, disk): no partial output; the run goes on, then exits 1
        result.status = FAILED
        result.error = f"{type(e).__name__}: {e} [{_where(e)}]"
        result.written = 0
    result.skipped_by_reason = dict(skipped_by_reason)
    result.phrases_per_caption = round(result.phrases / result.written, 4) if result.written else 0.0
    result.phrases_per_caption_hist = {str(n): hist[n] for n in sorted(hist)} if result.status != FAILED else {}
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _isolate_bad_captions(extractor: PhraseExtractor, keys: list[str], captions: list[str], skip):
    """After a chunk failed: extract caption by caption, skipping those the extractor fails on. If it fails on
    every caption of a chunk of several, the fault is not in the data: re-raise (the shard fails)."""
    good_keys, good_captions, phrases = [], [], []
    first_error: Exception | None = None
    for key, caption in zip(keys, captions):
        try:
            phrases.append(extractor.extract([caption], batch_size=1)[0])
        except Exception as e:
            first_error = first_error or e
            skip(key, EXTRACTOR_ERROR)
            continue
        good_keys.append(key)
        good_captions.append(caption)
    if not good_captions and len(captions) > 1 and first_error is not None:
        raise first_error
    return good_keys, good_captions, phrases


class _NoOutput(Exception):
    """Raised inside the writer block to discard the table of an input with nothing readable."""


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


# ----------------------------------------------------------------------------------------------------------------
# Worker processes

_worker_extractor: PhraseExtractor | None = None
_worker_error: str | None = None
_worker_queue: Any = None


def _worker_init(extractor: str, options: PhraseOptions, spacy_model: str, progress_queue: Any) -> None:
    global _worker_extractor, _worker_error, _worker_queue
    _worker_queue = progress_queue
    try:
        _worker_extractor = get_extractor(extractor, options, spacy_model)
    except Exception as e:  # reported per task, so that the parent sees it as failed shards
        _worker_error = f"{type(e).__name__}: {e}"


def _worker_task(input_path: str, out_path: str, settings: ExtractPhrasesSettings) -> ShardResult:
    if _worker_extractor is None:
        return ShardResult(input_path, None, FAILED, error=f"worker could not load the extractor: {_worker_error}")

    def report(n: int) -> None:
        if _worker_queue is not None:
            _worker_queue.put(n)

    return process_input(input_path, out_path, _worker_extractor, settings, report)


# ----------------------------------------------------------------------------------------------------------------
# The job


def run_extract_phrases(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: ExtractPhrasesSettings | None = None,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> JobReport:
    """Write `<out_dir>/<stem>.phrases.parquet` for every input (tar shard or caption file) and merge each
    input's entry into `<out_dir>/_stats.json`.

    Inputs with an existing output are skipped unless `settings.overwrite`. `workers` processes (default: the
    CPU cores, at most one per input) each load the extractor once; `workers=1` runs in this process.
    Raises GlipkitUsageError before any work for problems the user can fix (missing spaCy model, clashing
    output names); never for damaged inputs or a failed shard, which are reported in the results.
    """
    settings = settings or ExtractPhrasesSettings()
    if settings.extractor not in EXTRACTORS:
        raise GlipkitUsageError(f"unknown extractor {settings.extractor!r}; choose one of {', '.join(EXTRACTORS)}")
    started = time.perf_counter()
    out = Path(out_dir)
    paths = [Path(p) for p in inputs]
    outputs = _check_unique_outputs(paths, out)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[int, ShardResult] = {}
    todo: list[int] = []
    for i, (inp, outp) in enumerate(zip(paths, outputs)):
        if outp.exists() and not settings.overwrite:
            results[i] = ShardResult(str(inp), str(outp), EXISTS)
        else:
            todo.append(i)
    if todo and settings.extractor != "ngrams":
        # Fail fast in the parent (one clear error) instead of in every worker.
        resolve_spacy_model(settings.spacy_model, allow_download=settings.allow_download)

    header = {
        "command": COMMAND,
        "extractor": settings.extractor,
        "options": asdict(settings.options),
        "spacy_model": settings.spacy_model,
    }
    state = {"captions": 0, "done": len(results)}

    def emit(finished: ShardResult | None = None) -> None:
        if progress is not None:
            progress(JobProgress(state["done"], len(paths), state["captions"], time.perf_counter() - started, finished))

    def finish(i: int, result: ShardResult) -> None:
        results[i] = result
        state["done"] += 1
        update_stats(out, {result.name: result.stats_entry()}, header)
        emit(result)

    emit()
    n_workers = max(1, min(workers or default_workers(), len(todo)))
    if todo and n_workers == 1:
        extractor = get_extractor(settings.extractor, settings.options, settings.spacy_model)

        def on_captions(n: int) -> None:
            state["captions"] += n
            emit()

        for i in todo:
            finish(i, process_input(paths[i], outputs[i], extractor, settings, on_captions))
    elif todo:
        _run_pool(paths, outputs, todo, settings, n_workers, state, finish, emit)

    ordered = [results[i] for i in range(len(paths))]
    return JobReport(ordered, time.perf_counter() - started, out)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Not fork: the parent may hold threads (progress display, Arrow's pool) that make fork unsafe. The
    forkserver, a fresh single-threaded process, imports spaCy once and forks the workers from there, so each
    worker only loads the model; where there is no forkserver, spawn (each worker imports everything)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, "spacy"])
    return context


def _run_pool(paths, outputs, todo, settings, n_workers, state, finish, emit) -> None:
    context = _worker_context()
    progress_queue = context.Queue()
    pool = ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=context,
        initializer=_worker_init,
        initargs=(settings.extractor, settings.options, settings.spacy_model, progress_queue),
    )
    futures: dict[Future, int] = {}
    try:
        for i in todo:
            futures[pool.submit(_worker_task, str(paths[i]), str(outputs[i]), settings)] = i
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            drained = 0
            while True:
                try:
                    drained += progress_queue.get_nowait()
                except queue_module.Empty:
                    break
            if drained:
                state["captions"] += drained
            for future in done:
                i = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    result = ShardResult(str(paths[i]), None, FAILED, error="a worker process died (out of memory?)")
                except Exception as e:
                    result = ShardResult(str(paths[i]), None, FAILED, error=f"{type(e).__name__}: {e}")
                finish(i, result)
            if not done:
                emit()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        progress_queue.close()
