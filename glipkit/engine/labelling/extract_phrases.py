"""The extract-phrases job: captions of many inputs -> one `<stem>.phrases.parquet` each, over N processes.

Each input (tar shard or caption file) is one task, claimed before it starts (engine/claims.py). A task reads
its captions, runs the phrase extractor in chunks (`nlp.pipe` batches inside), streams rows into an atomic
Parquet writer, writes its `_stats.json` entry and returns a ShardResult. Worker processes load spaCy once. The
parent only schedules, counts progress and merges the entries into `_stats.json` (engine/shard_job.py), so a
killed job keeps every finished input and its entry; a rerun skips inputs whose output this command wrote with
the same settings.
"""

from __future__ import annotations

import contextlib
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

from glipkit.data.captions import CAPTION_FILE_SUFFIXES, expand_caption_files, iter_caption_records
from glipkit.data.shards import ShardReadError, expand_shards, shard_url
from glipkit.data.tables import PHRASES_SCHEMA, PHRASES_SUFFIX, AtomicParquetWriter, phrases_table
from glipkit.engine.claims import Claims
from glipkit.engine.output_dir import OutputDir
from glipkit.engine.progress import ProgressCallback, ProgressEvent
from glipkit.engine.shard_job import DONE, FAILED, UNREADABLE, JobReport, ShardResult, StatsWriter, \
    claimed_rounds, output_names, plan_outputs, stats_entry_name, stopped_reading
from glipkit.errors import GlipkitUsageError
from glipkit.text.phrases import EXTRACTORS, Phrase, PhraseExtractor, PhraseOptions, get_extractor, \
    lower_same_length
from glipkit.text.spacy_models import DEFAULT_SPACY_MODEL, resolve_spacy_model

COMMAND = "extract-phrases"
DAMAGED = "truncated or corrupt input"  # skip reason of the sample being read when an input turned out damaged
EXTRACTOR_ERROR = "extractor error"  # skip reason of a caption the extractor raised on


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


# ----------------------------------------------------------------------------------------------------------------
# Captions -> phrases (also used by pseudo-label's on-the-fly extraction)


def extract_each(extractor: PhraseExtractor, captions: list[str], batch_size: int) -> list[list[Phrase] | Exception]:
    """The phrases of each caption, extracted in one call; when that call fails, caption by caption, so that a
    caption that breaks the extractor gets its exception in place of its phrases and the others are kept."""
    try:
        return list(extractor.extract(captions, batch_size=batch_size))
    except Exception:  # noqa: BLE001 - isolate the caption(s) at fault
        pass
    found: list[list[Phrase] | Exception] = []
    for caption in captions:
        try:
            found.append(extractor.extract([caption], batch_size=1)[0])
        except Exception as error:  # noqa: BLE001
            found.append(error)
    return found


def stored_caption(caption: str, options: PhraseOptions) -> str:
    """The caption as the tables store it: lowercased (same length) with lowercased phrases, so that spans index
    it and `caption[start:end] == text` holds."""
    return lower_same_length(caption) if options.lowercase else caption


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def resolve_inputs(shards: str | None = None, captions: str | None = None) -> list[Path]:
    """Inputs named by exactly one of a shard spec (`--shards`) or a caption-file spec (`--captions`)."""
    if (shards is None) == (captions is None):
        raise GlipkitUsageError("give exactly one of --shards SPEC or --captions FILE")
    return expand_shards(shards) if shards is not None else expand_caption_files(captions)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# One input


def process_input(
    input_path: str | os.PathLike,
    out: OutputDir | str | os.PathLike,
    name: str,
    extractor: PhraseExtractor,
    settings: ExtractPhrasesSettings,
    on_captions: Callable[[int], None] | None = None,
) -> ShardResult:
    """Extract phrases for every caption of one input, write its table `name` in `out` atomically and its stats
    entry; never raises for damaged input (status PARTIAL / UNREADABLE) or job errors (status FAILED, no output)."""
    started = time.perf_counter()
    out_dir = out if isinstance(out, OutputDir) else OutputDir(out)
    result = ShardResult(str(input_path), DONE, counts={"phrases": 0})
    hist: Counter[int] = Counter()
    table_settings = {**extractor.settings(), "input": str(input_path)}
    try:
        with AtomicParquetWriter(name, PHRASES_SCHEMA, COMMAND, table_settings,
                                 atomic=lambda _: out_dir.atomic(name)) as writer:
            keys: list[str] = []
            captions: list[str] = []

            def flush() -> None:
                found = extract_each(extractor, captions, settings.batch_size)
                errors = [f for f in found if isinstance(f, Exception)]
                if len(captions) > 1 and len(errors) == len(captions):
                    raise errors[0]  # it fails on every caption: the fault is not in the data
                rows = [(k, stored_caption(c, extractor.options), f) for k, c, f in zip(keys, captions, found)
                        if not isinstance(f, Exception)]
                for key, phrases in zip(keys, found):
                    if isinstance(phrases, Exception):
                        result.skips.add(key, EXTRACTOR_ERROR)
                writer.write_table(phrases_table([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
                for _, _, phrases in rows:
                    hist[len(phrases)] += 1
                    result.counts["phrases"] += len(phrases)
                result.written += len(rows)
                if on_captions is not None:
                    on_captions(len(rows))
                keys.clear()
                captions.clear()

            try:
                for record in iter_caption_records(input_path):
                    result.read += 1
                    if record.caption is None:
                        result.skips.add(record.key, record.error or "no caption")
                        continue
                    keys.append(record.key)
                    captions.append(record.caption)
                    if len(captions) >= settings.chunk_size:
                        flush()
            except ShardReadError as e:
                result.error = str(e)
                result.status, result.read = stopped_reading(
                    e, result.read, lambda index, key, detail: result.skips.add(key, DAMAGED))
            if captions:
                flush()
            if result.status == UNREADABLE:
                raise _NoOutput()
            result.output = out_dir.path(name)
            write_entry(out_dir, result, hist, started)  # before the rename: a finished table has its entry
    except _NoOutput:
        write_entry(out_dir, result, hist, started)
    except Exception as e:  # a job error (extractor, disk): no partial output; the run goes on, then exits 1
        result.status, result.output, result.written = FAILED, None, 0
        result.error = f"{type(e).__name__}: {e} [{_where(e)}]"
        with contextlib.suppress(OSError):
            write_entry(out_dir, result, Counter(), started)
    return result


def write_entry(out_dir: OutputDir, result: ShardResult, hist: Counter | None = None,
                started: float | None = None) -> None:
    """Write an input's `_stats.json` entry (to be merged by the parent); `hist` counts captions by phrase count."""
    if started is not None:
        result.seconds = round(time.perf_counter() - started, 3)
    hist = hist or Counter()
    phrases = result.counts.get("phrases", 0)
    out_dir.write_json(stats_entry_name(COMMAND, result.input), {
        "input": result.input, "output": result.output, "status": result.status, "read": result.read,
        "written": result.written, "skipped": result.skipped, "skipped_by_reason": dict(result.skips.by_reason),
        "skipped_keys": result.skips.keys, "phrases": phrases,
        "phrases_per_caption": round(phrases / result.written, 4) if result.written else 0.0,
        "phrases_per_caption_hist": {str(n): hist[n] for n in sorted(hist)},
        "error": result.error, "seconds": result.seconds,
    })


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
    except Exception as e:  # reported per task, so that the parent sees it as failed inputs
        _worker_error = f"{type(e).__name__}: {e}"


def _worker_task(input_path: str, out: str, name: str, settings: ExtractPhrasesSettings) -> ShardResult:
    if _worker_extractor is None:
        return _failed(input_path, OutputDir(out), f"worker could not load the extractor: {_worker_error}")

    def report(n: int) -> None:
        if _worker_queue is not None:
            _worker_queue.put(n)

    return process_input(input_path, out, name, _worker_extractor, settings, report)


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
    """Write `<out_dir>/<stem>.phrases.parquet` for every input (tar shard or caption file) and fold each
    input's entry into `<out_dir>/_stats.json`; `out_dir` may be an fsspec URL.

    Inputs whose output this command wrote with the same settings are skipped unless `settings.overwrite`;
    outputs written otherwise stop the run (engine/shard_job.plan_outputs). Inputs are claimed, so several runs
    on one `out_dir` share the work. `workers` processes (default: the CPU cores, at most one per input) each load
    the extractor once; `workers=1` runs in this process. Raises GlipkitUsageError before any work for problems the
    user can fix (missing spaCy model, clashing output names, outputs of other settings); never for damaged
    inputs or a failed input, which are reported in the results.
    """
    settings = settings or ExtractPhrasesSettings()
    if settings.extractor not in EXTRACTORS:
        raise GlipkitUsageError(f"unknown extractor {settings.extractor!r}; choose one of {', '.join(EXTRACTORS)}")
    started = time.perf_counter()
    out = OutputDir(out_dir)
    paths = [shard_url(p) for p in inputs]
    names = output_names(out, paths, PHRASES_SUFFIX)
    expected: dict[str, Any] = {"extractor": settings.extractor, "options": asdict(settings.options)}
    if settings.extractor != "ngrams":
        # Fail fast in the parent (one clear error) instead of in every worker.
        expected["spacy_model_package"] = resolve_spacy_model(settings.spacy_model,
                                                              allow_download=settings.allow_download)
    out.makedirs()
    results, todo = plan_outputs(out, paths, names, COMMAND, expected, settings.overwrite)

    header = {"command": COMMAND, "extractor": settings.extractor, "options": asdict(settings.options),
              "spacy_model": settings.spacy_model}
    stats = StatsWriter(out, paths, header)
    captions = 0
    unit = "files" if any(p.endswith(CAPTION_FILE_SUFFIXES) for p in paths) else "shards"

    def emit() -> None:
        if progress is not None:
            progress(ProgressEvent(COMMAND, len(results), len(paths), unit, time.perf_counter() - started,
                                   {"captions": captions}))

    def on_captions(n: int) -> None:
        nonlocal captions
        captions += n
        emit()

    emit()
    if workers is None:
        from glipkit.engine.runtime import available_cores  # imports torch: only when needed

        workers = available_cores()
    extractor = None
    with Claims(out, COMMAND) as claims:
        def finish(i: int, result: ShardResult) -> None:
            results[i] = result
            claims.release(names[i])
            stats.merge_if_due()
            emit()

        for batch in claimed_rounds(out, claims, paths, names, todo, COMMAND, expected, results,
                                    settings.overwrite):
            n_workers = max(1, min(workers, len(batch)))
            if n_workers == 1:
                extractor = extractor or get_extractor(settings.extractor, settings.options, settings.spacy_model)
                for i in batch:
                    finish(i, process_input(paths[i], out, names[i], extractor, settings, on_captions))
            else:
                _run_pool(paths, out, names, batch, settings, n_workers, on_captions, finish)
    stats.merge()
    return JobReport([results[i] for i in range(len(paths))], time.perf_counter() - started, out.url,
                     stats_path=stats.path)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Not fork: the parent may hold threads (progress display, Arrow's pool) that make fork unsafe. The
    forkserver, a fresh single-threaded process, imports spaCy once and forks the workers from there, so each
    worker only loads the model; where there is no forkserver, spawn (each worker imports everything)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, "spacy"])
    return context


def _run_pool(paths, out: OutputDir, names, todo, settings, n_workers, on_captions, finish) -> None:
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
            futures[pool.submit(_worker_task, paths[i], out.url, names[i], settings)] = i
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            drained = 0
            while True:
                try:
                    drained += progress_queue.get_nowait()
                except queue_module.Empty:
                    break
            on_captions(drained)
            for future in done:
                i = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    result = _failed(paths[i], out, "a worker process died (out of memory?)")
                except Exception as e:
                    result = _failed(paths[i], out, f"{type(e).__name__}: {e}")
                finish(i, result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        progress_queue.close()


def _failed(input_path: str, out: OutputDir, error: str) -> ShardResult:
    """The result (and `_stats.json` entry) of an input whose worker failed before it could say how it went."""
    result = ShardResult(input_path, FAILED, error=error, counts={"phrases": 0})
    with contextlib.suppress(OSError):
        write_entry(out, result)
    return result
