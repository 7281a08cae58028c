"""The pseudo-label job: WebDataset shards -> a GLIP teacher -> `<out>/<shard>.labels.parquet` per shard and
`_stats.json`.

Flow (one process per GPU under torchrun, or one process on a CPU machine):
  * the shard list is split by rank, then by DataLoader worker (data/shards.py): no two processes share a shard;
  * each rank claims its shards before labelling them, so independent runs on one `--out` never label a shard
    twice at the same time (engine/claims.py);
  * workers read, decode, resize and bucket the images and find each caption's phrases (teacher_data.py);
  * this process runs the batched teacher (predictor.py) and applies the filters (filters.py);
  * a shard's rows are written when its last batch is done, under its final name only when whole (a local
    rename, or one upload to an fsspec `--out`), after its `_stats/pseudo-label/<stem>.json` entry; memory holds
    only the shards in flight;
  * rank 0 folds the entries into `_stats.json` as it goes and, after a barrier, once at the end.
Statuses, resume, claims and `_stats.json` are the shard-job skeleton's (engine/shard_job.py). A re-run skips
shards whose table this command wrote with the same model checksum and settings; a table of other settings stops
the run with the differences named (`overwrite` redoes them). A bad sample is counted with its key and reason,
never fatal; a damaged shard keeps the samples before the damage.

Output rows follow ARCHITECTURE.md (`shard`: the resolved path or URL; `url`, `original_width`, `original_height`:
img2dataset's, from the sample's .json; `width`, `height`: the stored image, whose pixels the boxes index) plus a
`flags` column: `below_image_threshold` / `too_few_boxes` (boxes
emptied by an image-level filter), `phrases_beyond_token_limit` (phrases past GLIP's 256 tokens were not
grounded: they stay in `phrases`, no box points at them), `no_phrases` (nothing to ground, no model pass).
In classes mode `phrases` lists the classes that got boxes (start = end = -1: they are not caption spans); the
whole vocabulary is in the file's metadata.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import torch

from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from glipkit.data.shards import expand_shards, expected_samples, shard_url, shards_for_rank
from glipkit.data.tables import LABELS_SCHEMA, LABELS_SUFFIX, LEGACY_LABELS_SUFFIX, read_metadata, write_table
from glipkit.engine.distributed import DistributedContext, init_distributed
from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings
from glipkit.engine.labelling.filters import NO_PHRASES, PHRASES_BEYOND_TOKEN_LIMIT, PRESETS, FilterSettings, \
    apply_filters, postprocess_for
from glipkit.engine.labelling.stats import ShardStats, rank_stats_path, read_rank_runs, summary
from glipkit.engine.labelling.teacher_data import CAPTION, CLASSES, EXTRACTION_FAILED, PROMPT_MODES, ImageBatch, \
    LoaderSettings, SampleRecord, ShardEnd, TeacherDataset, phrases_path
from glipkit.engine.predictor import Grounding, Predictor, PredictorSettings
from glipkit.model.config import SpeedConfig
from glipkit.engine.progress import ProgressCallback, ProgressEvent
from glipkit.engine.runtime import available_cores, load_model, resolve_device
from glipkit.engine.runtime import model_info as describe_model
from glipkit.engine.claims import Claims
from glipkit.engine.output_dir import OutputDir
from glipkit.engine.shard_job import DONE, FAILED, PARTIAL, JobReport, ShardResult, StatsWriter, claimed_rounds, \
    output_names, plan_outputs
from glipkit.errors import GlipkitUsageError
from glipkit.model.prompts import PromptChunk, vocabulary_chunks

COMMAND = "pseudo-label"
BARRIER_TIMEOUT_MINUTES = 7 * 24 * 60  # a rank that finished its shards waits for the slowest rank at the end
MODEL_ERROR = "model error"
# LABELS_SCHEMA, img2dataset's source fields (None when the sample's .json has none) and the row's flags.
LABELS_WITH_FLAGS_SCHEMA = pa.schema([
    *LABELS_SCHEMA,
    pa.field("url", pa.string()),
    pa.field("original_width", pa.int32()),  # img2dataset's size of the web original; width/height: stored image
    pa.field("original_height", pa.int32()),
    pa.field("flags", pa.list_(pa.string()), nullable=False),
])
PER_SHARD_SETTINGS = ("input", "phrases_table", "extractor")  # table settings that vary by shard


@dataclass
class PseudoLabelSettings:
    """Everything the job does besides which model and shards: prompts, filters, batching, precision, resume."""

    prompt_mode: str = CAPTION
    phrases_dir: Path | None = None  # extract-phrases output joined by key; None: extract on the fly
    extraction: ExtractPhrasesSettings = field(default_factory=ExtractPhrasesSettings)
    classes: list[str] | None = None  # classes mode vocabulary (the names written to the tables)
    class_prompt_names: list[str] | None = None  # what the prompt says for each class (prompt file), default: classes
    class_prefixes: list[str] | None = None  # prompt engineering (text/prompt_file.py), only the name is positive
    class_suffixes: list[str] | None = None
    chunk_size: int | None = None  # classes per prompt; None: all if they fit in 256 tokens, else 40 (§7.5)
    preset: str = "glip"
    filters: FilterSettings = field(default_factory=lambda: PRESETS["glip"])
    batch_size: int | None = None  # None: 8 on GPU, 1 on CPU (batching gains nothing there, see benchmarks/README.md)
    bucket_window: int = 8  # batches per aspect-ratio sorting window (padding ~7-10% on random demo shapes)
    workers: int | None = None  # DataLoader workers; None: from the cores per local rank
    image_size: tuple[int, int] | None = None  # (short side, long side limit); None: the model's (800, 1333)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    precision: str = "auto"
    pad_text_to_max_length: bool = False
    allow_tf32: bool = True
    speed: SpeedConfig | None = None  # execution levers (model/config.py); None: the model's
    pin_memory: bool = True  # CUDA: page-locked batches from the loader, copied to the GPU without blocking
    overwrite: bool = False
    stats_interval_s: float = 10.0  # rank 0 rewrites _stats.json at most this often while running


def parse_image_size(value: str) -> tuple[int, int]:
    """`--image-size SHORT[,MAX]` -> (short side, long side limit); MAX defaults to SHORT x 1333/800, GLIP's
    800/1333 ratio."""
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        raise GlipkitUsageError(f"--image-size {value!r}: expected SHORT or SHORT,MAX (integers)") from None
    size = (parts[0], parts[1] if len(parts) > 1 else max(parts[0], round(parts[0] * 1333 / 800)))
    if len(parts) > 2 or min(size) < 32 or size[1] < size[0]:
        raise GlipkitUsageError(f"--image-size {value!r}: need 32 <= SHORT <= MAX")
    return size


def default_batch_size(device: torch.device) -> int:
    """Images per model pass: 8 on GPU; 1 on CPU, where batching does not pay for its padding (and batch 1
    reproduces the official outputs exactly)."""
    return 8 if device.type == "cuda" else 1


def default_workers(context: DistributedContext) -> int:
    """DataLoader workers per rank: the rank's share of the cores minus one for the model's process, 1..8."""
    cores = available_cores() // max(1, context.local_world_size)
    return max(1, min(8, cores - 1))


def pseudo_label(
    shard_spec: str | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str = "glip-t",
    tokenizer: str | None = None,
    device: str = "auto",
    settings: PseudoLabelSettings | None = None,
    progress: ProgressCallback | None = None,
    on_ready: Callable[[DistributedContext, torch.device], None] | None = None,
) -> JobReport:
    """The `glipkit pseudo-label` command: join torchrun's group (if any), expand the shards, load the teacher
    on this rank's device and run the job."""
    # gloo even on GPUs: the ranks only meet in one barrier at the end, which may wait for hours on the slowest.
    context = init_distributed(backend="gloo", timeout_minutes=BARRIER_TIMEOUT_MINUTES)
    try:
        shards = expand_shards(shard_spec)
        target = resolve_device(device, context.local_rank)
        teacher = load_model(model, tokenizer, target)
        info = describe_model(model, tokenizer)
        if on_ready is not None:
            on_ready(context, target)
        return run_pseudo_label(shards, out_dir, teacher, settings, info, context, progress)
    finally:
        context.close()


# ----------------------------------------------------------------------------------------------------------------
# The job


def run_pseudo_label(
    shards: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model,
    settings: PseudoLabelSettings | None = None,
    model_info: dict[str, Any] | None = None,
    context: DistributedContext | None = None,
    progress: ProgressCallback | None = None,
) -> JobReport:
    """Label this rank's slice of `shards` with `model` (a GLIP on its device) into `out_dir` (see module doc).

    Raises GlipkitUsageError before any work for problems the user can fix; never for bad samples or damaged
    shards (reported in the results and `_stats.json`).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used before workers fork
    settings = settings or PseudoLabelSettings()
    context = context or DistributedContext()
    job = _Job([shard_url(s) for s in shards], OutputDir(out_dir), model, settings, model_info or {}, context,
               progress)
    return job.run()


class _Job:
    def __init__(self, shards, out_dir, model, settings, model_info, context, progress):
        self.all_shards = shards
        self.out = out_dir
        self.model = model
        self.settings = settings
        self.context = context
        self.progress = progress
        self._validate()
        self.shards = shards_for_rank(shards, context.rank, context.world_size)
        cfg = model.config
        min_size, max_size = settings.image_size or (cfg.input.min_size, cfg.input.max_size)
        device = next(model.parameters()).device
        self.batch_size = settings.batch_size or default_batch_size(device)
        self.loader_settings = LoaderSettings(
            prompt_mode=settings.prompt_mode,
            phrases_dir=Path(settings.phrases_dir) if settings.phrases_dir else None,
            extraction=settings.extraction if settings.prompt_mode == CAPTION and not settings.phrases_dir else None,
            min_size=min_size, max_size=max_size, size_divisibility=cfg.input.size_divisibility,
            batch_size=self.batch_size, bucket_window=settings.bucket_window,
            max_image_pixels=settings.max_image_pixels,
        )
        postprocess = postprocess_for(settings.filters, cfg.postprocess)
        self.predictor = Predictor(model, PredictorSettings(settings.precision, settings.pad_text_to_max_length,
                                                            settings.allow_tf32, postprocess, settings.speed,
                                                            settings.pin_memory))
        self.class_prompts = None
        if settings.prompt_mode == CLASSES:
            try:
                names = settings.class_prompt_names or settings.classes or []
                self.class_prompts = vocabulary_chunks(model.tokenizer, names, settings.class_prefixes,
                                                       settings.class_suffixes, settings.chunk_size,
                                                       cfg.language.max_query_len)
            except ValueError as e:
                raise GlipkitUsageError(str(e)) from None
        self.table_settings = self._table_settings(model_info, min_size, max_size)
        header = {"command": COMMAND, "settings": self.table_settings, "world_size": context.world_size}
        self.stats = StatsWriter(out_dir, shards, header, main=context.is_main, interval_s=settings.stats_interval_s,
                                 summary=lambda entries: summary(entries, read_rank_runs(out_dir, context.world_size)))
        self.claims = Claims(out_dir, COMMAND)
        self.started = time.perf_counter()
        self.images = 0
        self.boxes = 0
        self.done = 0
        self.expected: dict[str, int | None] = {}  # samples of each shard to label, where known

    # -- setup --------------------------------------------------------------------------------------------------

    def _validate(self) -> None:
        s = self.settings
        if s.prompt_mode not in PROMPT_MODES:
            raise GlipkitUsageError(f"--prompt-mode must be one of {', '.join(PROMPT_MODES)}")
        if s.prompt_mode == CLASSES and not s.classes:
            raise GlipkitUsageError("--prompt-mode classes needs --classes 'a. b. c' or a class file")
        if s.prompt_mode == CAPTION and s.classes:
            raise GlipkitUsageError("--classes is for --prompt-mode classes")
        if s.prompt_mode == CLASSES and s.phrases_dir:
            raise GlipkitUsageError("--phrases is for --prompt-mode caption (classes mode grounds a fixed vocabulary)")
        if s.batch_size is not None and s.batch_size < 1:
            raise GlipkitUsageError("--batch-size must be >= 1")
        self.outputs = dict(zip(self.all_shards, output_names(self.out, self.all_shards, LABELS_SUFFIX)))
        if s.phrases_dir and s.prompt_mode == CAPTION:
            directory = Path(s.phrases_dir)
            if not directory.is_dir():
                raise GlipkitUsageError(f"--phrases {directory}: not a directory")
            if not any(phrases_path(directory, shard).exists() for shard in self.all_shards):
                example = phrases_path(directory, self.all_shards[0]).name
                raise GlipkitUsageError(f"--phrases {directory} holds no <shard>.phrases.parquet for any of the "
                                        f"{len(self.all_shards)} shards (e.g. {example})")

    def _table_settings(self, model_info, min_size, max_size) -> dict[str, Any]:
        s = self.settings
        table = {
            **model_info,
            "prompt_mode": s.prompt_mode,
            "preset": s.preset,
            "filters": asdict(s.filters),
            "postprocess": asdict(self.predictor.settings.postprocess),
            "image_size": [min_size, max_size],
            "batch_size": self.batch_size,
            "bucket_window": s.bucket_window,
            "precision": self.predictor.precision,
            "text_padding": "max_length" if s.pad_text_to_max_length else "longest",
            "max_image_pixels": s.max_image_pixels,
        }
        if s.prompt_mode == CLASSES:
            table.update(classes=list(s.classes or []), class_prompt_names=s.class_prompt_names,
                         class_prefixes=s.class_prefixes,
                         class_suffixes=s.class_suffixes,
                         class_prompts=[p.text for p in self.class_prompts or []])
        elif s.phrases_dir:
            table["phrases_dir"] = shard_url(s.phrases_dir)
        else:
            table["extraction"] = {"extractor": s.extraction.extractor, "options": asdict(s.extraction.options),
                                   "spacy_model": s.extraction.spacy_model}
        if table.get("tokenizer") and os.path.exists(table["tokenizer"]):
            table["tokenizer"] = os.path.abspath(table["tokenizer"])
        return table

    def _expected_settings(self) -> dict[str, Any]:
        """The table settings a finished table must hold to be this run's (engine/shard_job.plan_outputs): all but
        where the model file and shard are (the checksum says which model) and what varies by shard."""
        expected = {k: v for k, v in self.table_settings.items() if k not in PER_SHARD_SETTINGS + ("model_file",)}
        if "model_sha256" in expected:
            expected.pop("model", None)
        extraction = expected.get("extraction")
        if extraction is not None:  # tables record the extractor's own settings: the spaCy package it loaded
            expected["extraction"] = {k: v for k, v in extraction.items() if k != "spacy_model"}
            if extraction["extractor"] != "ngrams":
                from glipkit.text.spacy_models import resolve_spacy_model

                expected["extraction"]["spacy_model_package"] = resolve_spacy_model(extraction["spacy_model"])
        return expected

    # -- running ------------------------------------------------------------------------------------------------

    def run(self) -> JobReport:
        self.out.makedirs()
        names = [self.outputs[s] for s in self.shards]
        expected = self._expected_settings()
        finished, todo = plan_outputs(self.out, self.shards, names, COMMAND, expected, self.settings.overwrite,
                                      LEGACY_LABELS_SUFFIX)
        self.done = len(finished)
        self.expected = {self.shards[i]: expected_samples(self.shards[i]) for i in todo}
        self._emit()
        labelled: dict[str, ShardResult] = {}
        with self.claims:
            for batch in claimed_rounds(self.out, self.claims, self.shards, names, todo, COMMAND, expected, finished,
                                        self.settings.overwrite):
                self._label([self.shards[i] for i in batch], labelled)
        results = {**{self.shards[i]: result for i, result in finished.items()}, **labelled}
        seconds = time.perf_counter() - self.started
        self.out.write_json(rank_stats_path(self.context.rank), {
            "rank": self.context.rank, "world_size": self.context.world_size, "host": socket.gethostname(),
            "device": str(self.predictor.device), "shards_assigned": len(self.shards), "shards_labelled": len(labelled),
            "images_read": self.images, "boxes": self.boxes, "seconds": round(seconds, 3),
            "images_per_s": round(self.images / seconds, 3) if seconds > 0 else None,
        })
        self.context.barrier()
        stats = self.stats.merge() if self.context.is_main else None
        ordered = [results[s] for s in self.shards]
        return JobReport(ordered, seconds, self.out.url, self.context.rank, self.context.world_size, stats,
                         self.stats.path if self.context.is_main else None)

    def _label(self, todo: list[str], results: dict[str, ShardResult]) -> None:
        from torch.utils.data import DataLoader

        workers = self.settings.workers if self.settings.workers is not None else default_workers(self.context)
        workers = max(0, min(workers, len(todo)))
        dataset = TeacherDataset(todo, self.loader_settings)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                            pin_memory=self.predictor.device.type == "cuda" and self.settings.pin_memory,
                            prefetch_factor=4 if workers else None)
        open_shards: dict[str, _OpenShard] = {}
        for item in loader:
            if isinstance(item, ImageBatch):
                state = open_shards.setdefault(item.shard, _OpenShard(item.shard, self.context.rank))
                self._label_batch(item, state)
                self._emit()
            else:
                state = open_shards.pop(item.shard, None) or _OpenShard(item.shard, self.context.rank)
                result = self._finish_shard(item, state)
                results[item.shard] = result
                self.done += 1
                self._emit(result)

    def _label_batch(self, batch: ImageBatch, state: "_OpenShard") -> None:
        groundings = self._ground(batch)
        rows, indices = [], []
        for record, grounding in zip(batch.records, groundings):
            if isinstance(grounding, str):
                state.stats.add_failure(record.key, MODEL_ERROR, grounding)
                continue
            row = self._row(record, grounding, batch.shard)
            rows.append(row)
            indices.append(record.index)
            state.stats.add_row(row, labelled=True, beyond_limit=len(grounding.unmapped))
            self.boxes += len(row["boxes"])
        state.add(indices, rows)
        self.images += len(batch.records)

    def _chunks(self, captions_and_spans: list[tuple[str, list]]):
        if self.class_prompts is not None:
            return PromptChunk.for_vocabulary(self.class_prompts, len(captions_and_spans))
        return [PromptChunk.for_captions([c for c, _ in captions_and_spans], [s for _, s in captions_and_spans])]

    def _ground(self, batch: ImageBatch) -> list[Grounding | str]:
        """Groundings of a batch; when the batch fails (e.g. out of memory), each image alone; a string per
        image that still fails."""
        prompts = [(r.caption, [(p["start"], p["end"]) for p in r.phrases]) for r in batch.records]
        try:
            return self.predictor.ground(batch.images, batch.sizes, batch.original_sizes, self._chunks(prompts))
        except Exception as error:  # noqa: BLE001 - one bad batch must not stop the job
            if len(batch.records) == 1:
                return [f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
        if self.predictor.device.type == "cuda":
            torch.cuda.empty_cache()
        out: list[Grounding | str] = []
        divisor = self.loader_settings.size_divisibility
        for i, (h, w) in enumerate(batch.sizes):
            single = ImageBatch(batch.shard, batch.images[i : i + 1, :, : -(-h // divisor) * divisor,
                                                          : -(-w // divisor) * divisor],
                                [(h, w)], [batch.records[i]])
            out.extend(self._ground(single))
        return out

    def _row(self, record: SampleRecord, grounding: Grounding, shard: str) -> dict[str, Any]:
        keep, flags = apply_filters(grounding.scores, self.settings.filters)
        if grounding.unmapped:
            flags.insert(0, PHRASES_BEYOND_TOKEN_LIMIT)
        boxes = grounding.boxes[keep].tolist()
        scores = grounding.scores[keep].tolist()
        labels = grounding.labels[keep].tolist()
        phrases = record.phrases
        if self.class_prompts is not None:
            names = self.settings.classes or []
            used = sorted(set(labels))
            position = {label: i for i, label in enumerate(used)}
            phrases = [{"text": names[label], "start": -1, "end": -1} for label in used]
            labels = [position[label] for label in labels]
        return {
            "key": record.key,
            "caption": record.caption,
            "phrases": phrases,
            "shard": shard,
            "width": record.width,
            "height": record.height,
            "boxes": [{"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "score": s, "phrase": p}
                      for b, s, p in zip(boxes, scores, labels)],
            "flags": flags,
            **_source_fields(record),
        }

    def _finish_shard(self, end: ShardEnd, state: "_OpenShard") -> ShardResult:
        for _, key, reason, detail in end.failures:
            state.stats.add_failure(key, reason, detail)
        unlabelled = [{"key": record.key, "caption": record.caption, "phrases": [], "shard": end.shard,
                       "width": record.width, "height": record.height, "boxes": [], "flags": [NO_PHRASES],
                       **_source_fields(record)} for record in end.unlabelled]
        for row in unlabelled:
            state.stats.add_row(row, labelled=False)
        state.add([record.index for record in end.unlabelled], unlabelled)
        self.images += len(end.unlabelled) + len(end.failures)
        seconds = time.perf_counter() - state.started
        name = self.outputs[end.shard]
        target = self.out.path(name)
        status, error = end.status, end.error
        job_failures = sum(state.stats.failed.by_reason[r] for r in (MODEL_ERROR, EXTRACTION_FAILED))
        if status in (DONE, PARTIAL) and job_failures and state.stats.labelled == 0:
            # Every sample that reached the model (or the extractor) failed there: the fault is not in the data, so
            # the shard is failed (exit 1, redone by a rerun), never an empty table that a rerun would skip.
            reason = next((k.get("detail") or k["reason"] for k in state.stats.failed.keys
                           if k["reason"] in (MODEL_ERROR, EXTRACTION_FAILED)), "see _stats.json")
            status, error = FAILED, f"all {job_failures} samples failed in the job itself, e.g. {reason}"
        writes = status in (DONE, PARTIAL)
        result = ShardResult(end.shard, status, target if writes else None, end.read, state.stats.written,
                             state.stats.failed, {"boxes": state.stats.boxes}, error, round(seconds, 3))
        entry = state.stats.entry(status, end.read, result.output, error, seconds, end.image_pixels,
                                  end.batch_pixels)
        try:
            self.stats.write(end.shard, entry)  # before the table: a finished table always has its entry
            if writes:
                write_table(name, state.table(), LABELS_WITH_FLAGS_SCHEMA, COMMAND, self._settings_for(end),
                            atomic=lambda _: self.out.atomic(name))
        except Exception as e:  # e.g. disk full: no partial table; reported, and a re-run redoes the shard
            result.status, result.output = FAILED, None
            result.error = f"cannot write {target}: {type(e).__name__}: {e}"
            entry.update(status=FAILED, output=None, error=result.error)
            with contextlib.suppress(OSError):
                self.stats.write(end.shard, entry)
        self.claims.release(name)
        self.stats.merge_if_due()
        return result

    def _settings_for(self, end: ShardEnd) -> dict[str, Any]:
        settings = {**self.table_settings, "input": end.shard}
        if end.extractor_settings is not None:
            settings["extraction"] = end.extractor_settings
        elif self.settings.phrases_dir and self.settings.prompt_mode == CAPTION:
            try:
                settings["phrases_table"] = read_metadata(phrases_path(self.settings.phrases_dir, end.shard))
            except Exception:  # the metadata is informative only
                pass
        return settings

    def _emit(self, finished: ShardResult | None = None) -> None:
        if finished is not None and self.expected.get(finished.input) is None:
            self.expected[finished.input] = finished.read  # a size seen, for the shards of unknown size
        if self.progress is not None:
            elapsed = time.perf_counter() - self.started
            self.progress(ProgressEvent(COMMAND, self.done, len(self.shards), "shards", elapsed,
                                        {"images": self.images, "boxes": self.boxes},
                                        eta_s=self._eta_in_images(elapsed)))

    def _eta_in_images(self, elapsed: float) -> float | None:
        """Time left by images, so that there is an ETA before the first shard ends: the shards' sizes from
        img2dataset's stats files or, for the others, the mean size of those known or finished."""
        known = [n for n in self.expected.values() if n is not None]
        if not known or self.images == 0 or elapsed <= 0:
            return None
        total = sum(known) + (len(self.expected) - len(known)) * sum(known) / len(known)
        return max(0.0, total - self.images) / (self.images / elapsed)


def _source_fields(record: SampleRecord) -> dict[str, Any]:
    """img2dataset's `url`, `original_width`, `original_height` of a sample (None where its .json has none)."""
    meta = getattr(record, "meta", None) or {}
    return {name: meta.get(name) for name in ("url", "original_width", "original_height")}


class _OpenShard:
    """Rows (as compact Arrow tables, one per batch) and counts of a shard whose batches are still arriving."""

    def __init__(self, shard: str, rank: int):
        self.tables: list[pa.Table] = []
        self.indices: list[int] = []  # each row's position in the shard
        self.stats = ShardStats(shard, rank)
        self.started = time.perf_counter()

    def add(self, indices: list[int], rows: list[dict]) -> None:
        if rows:
            self.tables.append(pa.Table.from_pylist(rows, schema=LABELS_WITH_FLAGS_SCHEMA))
            self.indices.extend(indices)

    def table(self) -> pa.Table:
        """All rows in shard order (bucketing reorders images inside a window)."""
        if not self.tables:
            return LABELS_WITH_FLAGS_SCHEMA.empty_table()
        order = sorted(range(len(self.indices)), key=self.indices.__getitem__)
        return pa.concat_tables(self.tables).take(pa.array(order, type=pa.int64()))
