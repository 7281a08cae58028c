"""The pseudo-label job: WebDataset shards -> a GLIP teacher -> `<out>/<shard>.parquet` per shard + `_stats.json`.

Flow (one process per GPU under torchrun, or one process on a CPU machine):
  * the shard list is split by rank, then by DataLoader worker (data/shards.py): no two processes share a shard;
  * workers read, decode, resize and bucket the images and find each caption's phrases (teacher_data.py);
  * this process runs the batched teacher (predictor.py) and applies the filters (filters.py);
  * a shard's rows are written when its last batch is done, to a temporary name renamed into place (atomic),
    after its `_stats/shards/<stem>.json` entry; memory holds only the shards in flight;
  * rank 0 folds the entries into `_stats.json` as it goes and, after a barrier, once at the end.
A re-run skips shards whose table exists (`overwrite` redoes them). A bad sample is counted with its key and
reason, never fatal; a damaged shard keeps the samples before the damage.

Output rows follow ARCHITECTURE.md plus a `flags` column: `below_image_threshold` / `too_few_boxes` (boxes
emptied by an image-level filter), `phrases_beyond_token_limit` (phrases past GLIP's 256 tokens were not
grounded: they stay in `phrases`, no box points at them), `no_phrases` (nothing to ground, no model pass).
In classes mode `phrases` lists the classes that got boxes (start = end = -1: they are not caption spans); the
whole vocabulary is in the file's metadata.
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import torch

from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS
from glipkit.data.shards import shard_stem, shards_for_rank
from glipkit.data.tables import LABELS_SCHEMA, LABELS_SUFFIX, read_metadata, write_table
from glipkit.engine.distributed import DistributedContext, available_cores
from glipkit.engine.extract_phrases import ExtractPhrasesSettings
from glipkit.engine.filters import NO_PHRASES, PHRASES_BEYOND_TOKEN_LIMIT, PRESETS, FilterSettings, \
    apply_filters, postprocess_for
from glipkit.engine.label_stats import ShardStats, merge_stats, rank_stats_path, shard_stats_path, \
    write_json_atomic
from glipkit.engine.predictor import Grounding, Predictor, PredictorSettings, caption_chunks, class_chunks
from glipkit.engine.teacher_data import CAPTION, CLASSES, DONE, FAILED, PARTIAL, PROMPT_MODES, ImageBatch, \
    LoaderSettings, SampleRecord, ShardEnd, TeacherDataset, phrases_path
from glipkit.engine.teacher_data import UNREADABLE  # noqa: F401  (a ShardResult status, like EXISTS)
from glipkit.errors import GlipkitUsageError
from glipkit.model.prompts import vocabulary_chunks

COMMAND = "pseudo-label"
BARRIER_TIMEOUT_MINUTES = 7 * 24 * 60  # a rank that finished its shards waits for the slowest rank at the end
EXISTS = "exists"  # ShardResult.status of a shard skipped because its table exists
MODEL_ERROR = "model error"
LABELS_WITH_FLAGS_SCHEMA = LABELS_SCHEMA.append(pa.field("flags", pa.list_(pa.string()), nullable=False))


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
    overwrite: bool = False
    stats_interval_s: float = 10.0  # rank 0 rewrites _stats.json at most this often while running


@dataclass
class ShardResult:
    """What happened to one shard in this run."""

    shard: str
    status: str
    output: str | None = None
    read: int = 0
    written: int = 0
    failed: int = 0
    boxes: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class JobProgress:
    """Sent to the progress callback after every batch and every finished shard (this rank's counts)."""

    shards_done: int
    shards_total: int
    images: int  # images read in this run (counted when they leave the model, or fail)
    boxes: int
    elapsed_s: float
    finished: ShardResult | None = None


@dataclass
class JobReport:
    """This rank's results."""

    results: list[ShardResult]
    seconds: float
    out_dir: Path
    rank: int = 0
    world_size: int = 1
    stats: dict | None = None  # the merged _stats.json (rank 0)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def images_read(self) -> int:
        return sum(r.read for r in self.results)

    @property
    def rows_written(self) -> int:
        return sum(r.written for r in self.results)

    @property
    def boxes(self) -> int:
        return sum(r.boxes for r in self.results)

    @property
    def images_per_second(self) -> float:
        return self.images_read / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[JobProgress], None]


# ----------------------------------------------------------------------------------------------------------------
# Model


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def load_teacher(model: str, tokenizer: str | None = None, device: torch.device | str = "cpu"):
    """(GLIP in eval mode on `device`, model info for the tables' metadata) from a name, a path or `preset:NAME`."""
    from glipkit.engine.loading import load_glip
    from glipkit.model.hub import NAMED_MODELS, download_named_model

    glip = load_glip(model, tokenizer, str(device))
    info: dict[str, Any] = {"model": model, "tokenizer": tokenizer or "bert-base-uncased"}
    if model.startswith("preset:"):
        info["weights"] = "random (torch.manual_seed(0))"
    else:
        path = download_named_model(model) if model in NAMED_MODELS else Path(model)
        info.update(model_file=str(path), model_bytes=os.path.getsize(path), model_sha256=file_sha256(path))
    return glip, info


# ----------------------------------------------------------------------------------------------------------------
# Paths


def output_path(out_dir: str | os.PathLike, shard: str | os.PathLike) -> Path:
    """`<out_dir>/<shard stem>.parquet`."""
    return Path(out_dir) / f"{shard_stem(shard)}{LABELS_SUFFIX}"


def check_unique_outputs(shards: Sequence[str | os.PathLike]) -> None:
    """Two shards with the same stem would write the same table: a usage error, found before any work."""
    seen: dict[str, str] = {}
    for shard in shards:
        stem = shard_stem(shard)
        if stem in seen:
            raise GlipkitUsageError(f"shards {seen[stem]} and {shard} would both write {stem}{LABELS_SUFFIX}; "
                                    "give them distinct names")
        seen[stem] = str(shard)


def _remove_stale_temporaries(out_dir: Path, shards: Sequence[str]) -> None:
    # Temporary files of a killed run (hidden, never read by anything); only this rank's shards are touched.
    for shard in shards:
        stem = shard_stem(shard)
        stats_dir = shard_stats_path(out_dir, shard).parent
        for directory, prefix in ((out_dir, f".{stem}{LABELS_SUFFIX}.tmp-"), (stats_dir, f".{stem}.json.tmp-")):
            if directory.is_dir():
                for path in directory.glob(glob.escape(prefix) + "*"):
                    path.unlink(missing_ok=True)


def default_batch_size(device: torch.device) -> int:
    """Images per model pass: 8 on GPU; 1 on CPU, where batching does not pay for its padding (and batch 1
    reproduces the official outputs exactly)."""
    return 8 if device.type == "cuda" else 1


def default_workers(context: DistributedContext) -> int:
    """DataLoader workers per rank: the rank's share of the cores minus one for the model's process, 1..8."""
    cores = available_cores() // max(1, context.local_world_size)
    return max(1, min(8, cores - 1))


def parse_class_list(value: str) -> list[str]:
    """Classes from `--classes`: a file (.json list, COCO json with `categories`, or text with one class a
    line) or an inline "person. dog. traffic light" (commas work too when there is no '.')."""
    import json

    path = Path(value)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict) and "categories" in data:
                data = [c["name"] for c in sorted(data["categories"], key=lambda c: c.get("id", 0))]
            if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
                raise GlipkitUsageError(f"{path}: expected a JSON list of class names or COCO json with 'categories'")
            names = [c.strip() for c in data]
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            names = lines if len(lines) > 1 else parse_class_list(lines[0]) if lines else []
    else:
        separator = "." if "." in value else ","
        names = [c.strip() for c in value.split(separator)]
    names = [n for n in names if n]
    if not names:
        raise GlipkitUsageError(f"--classes {value!r} names no class")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GlipkitUsageError(f"--classes lists {duplicates[0]!r} more than once")
    return names


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
    from glipkit.data.shards import expand_shards
    from glipkit.engine.distributed import device_for_rank, init_distributed

    # gloo even on GPUs: the ranks only meet in one barrier at the end, which may wait for hours on the slowest.
    context = init_distributed(backend="gloo", timeout_minutes=BARRIER_TIMEOUT_MINUTES)
    try:
        shards = expand_shards(shard_spec)
        target = device_for_rank(device, context)
        glip, info = load_teacher(model, tokenizer, target)
        if on_ready is not None:
            on_ready(context, target)
        return run_pseudo_label(shards, out_dir, glip, settings, info, context, progress)
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
    job = _Job(list(map(str, shards)), Path(out_dir), model, settings, model_info or {}, context, progress)
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
                                                            settings.allow_tf32, postprocess))
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
        self.header = {"command": COMMAND, "settings": self.table_settings, "world_size": context.world_size}
        self.started = time.perf_counter()
        self.images = 0
        self.boxes = 0
        self.done = 0
        self.last_merge = 0.0

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
        check_unique_outputs(self.all_shards)
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
            table["phrases_dir"] = str(s.phrases_dir)
        else:
            table["extraction"] = {"extractor": s.extraction.extractor, "options": asdict(s.extraction.options),
                                   "spacy_model": s.extraction.spacy_model}
        return table

    # -- running ------------------------------------------------------------------------------------------------

    def run(self) -> JobReport:
        self.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, ShardResult] = {}
        todo = []
        for shard in self.shards:
            target = output_path(self.out, shard)
            if target.exists() and not self.settings.overwrite:
                results[shard] = ShardResult(shard, EXISTS, str(target))
            else:
                todo.append(shard)
        self.done = len(results)
        _remove_stale_temporaries(self.out, todo)
        self._emit()
        if todo:
            self._label(todo, results)
        seconds = time.perf_counter() - self.started
        write_json_atomic(rank_stats_path(self.out, self.context.rank), {
            "rank": self.context.rank, "world_size": self.context.world_size, "host": socket.gethostname(),
            "device": str(self.predictor.device), "shards_assigned": len(self.shards), "shards_labelled": len(todo),
            "images_read": self.images, "boxes": self.boxes, "seconds": round(seconds, 3),
            "images_per_s": round(self.images / seconds, 3) if seconds > 0 else None,
        })
        self.context.barrier()
        stats = None
        if self.context.is_main:
            stats = merge_stats(self.out, self.all_shards, self.header, self.context.world_size)
        ordered = [results[s] for s in self.shards]
        return JobReport(ordered, seconds, self.out, self.context.rank, self.context.world_size, stats)

    def _label(self, todo: list[str], results: dict[str, ShardResult]) -> None:
        from torch.utils.data import DataLoader

        workers = self.settings.workers if self.settings.workers is not None else default_workers(self.context)
        workers = max(0, min(workers, len(todo)))
        dataset = TeacherDataset(todo, self.loader_settings)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                            pin_memory=self.predictor.device.type == "cuda",
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
            return class_chunks(self.class_prompts, len(captions_and_spans))
        return caption_chunks([c for c, _ in captions_and_spans], [s for _, s in captions_and_spans])

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
        }

    def _finish_shard(self, end: ShardEnd, state: "_OpenShard") -> ShardResult:
        for _, key, reason, detail in end.failures:
            state.stats.add_failure(key, reason, detail)
        unlabelled = [{"key": record.key, "caption": record.caption, "phrases": [], "shard": end.shard,
                       "width": record.width, "height": record.height, "boxes": [], "flags": [NO_PHRASES]}
                      for record in end.unlabelled]
        for row in unlabelled:
            state.stats.add_row(row, labelled=False)
        state.add([record.index for record in end.unlabelled], unlabelled)
        self.images += len(end.unlabelled) + len(end.failures)
        seconds = time.perf_counter() - state.started
        target = output_path(self.out, end.shard)
        writes = end.status in (DONE, PARTIAL)
        status, error = end.status, end.error
        result = ShardResult(end.shard, status, str(target) if writes else None, end.read, state.stats.written,
                             sum(state.stats.failed_by_reason.values()), state.stats.boxes, error, round(seconds, 3))
        entry = state.stats.entry(status, end.read, result.output, error, seconds, end.image_pixels, end.batch_pixels)
        try:
            write_json_atomic(shard_stats_path(self.out, end.shard), entry)
            if writes:
                write_table(target, state.table(), LABELS_WITH_FLAGS_SCHEMA, COMMAND, self._settings_for(end))
        except Exception as e:  # e.g. disk full: no partial table; reported, and a re-run redoes the shard
            result.status, result.output = FAILED, None
            result.error = f"cannot write {target}: {type(e).__name__}: {e}"
            entry.update(status=FAILED, output=None, error=result.error)
            try:
                write_json_atomic(shard_stats_path(self.out, end.shard), entry)
            except OSError:
                pass
        if self.context.is_main and time.perf_counter() - self.last_merge >= self.settings.stats_interval_s:
            merge_stats(self.out, self.all_shards, self.header, self.context.world_size)
            self.last_merge = time.perf_counter()
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
        if self.progress is not None:
            self.progress(JobProgress(self.done, len(self.shards), self.images, self.boxes,
                                      time.perf_counter() - self.started, finished))


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
