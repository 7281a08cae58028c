"""Training a GLIP student on gold and pseudo-labelled data (`glipkit train-student`; GLIP_SPEC.md §8, §9).

One code path for 1 or N processes (torchrun: DDP, gloo on CPU, nccl on GPU). Step s always trains on the same
samples (data/training_stream.py) and re-seeds the model's random ops (dropout, DropBlock, drop path) from
(seed, step, rank), so `resume` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from glipkit.data.collate import TrainingBatch
from glipkit.engine import runtime
from glipkit.engine.distributed import DistributedContext, init_distributed
from glipkit.engine.progress import ProgressCallback, ProgressEvent
from glipkit.engine.training import checkpoints
from glipkit.engine.training.config import TrainConfig, changed_run_options
from glipkit.engine.training.data import build_batches, build_mixture
from glipkit.engine.training.ema import WeightEma
from glipkit.engine.training.optimization import (OptimizerSettings, ScheduleSettings, build_optimizer,
                                                  build_scheduler, lr_factor)
from glipkit.engine.training.tuning import apply_tuning, enable_fusion_checkpointing, set_train_mode
from glipkit.files import write_json_atomic
from glipkit.model.loss import GroundingLoss, GroundingTargets

METRICS_FILE = "metrics.jsonl"
SKIPPED_FILE = "skipped.jsonl"
FINAL_WEIGHTS = "model.safetensors"
CONFIG_FILE = "train_config.json"
TOKENIZER_DIR = "tokenizer"
TASK = "train"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; the message names the step and the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) stopped the run; a checkpoint of the last finished step was written when possible."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    weights: Path
    steps: int
    last_losses: dict[str, float]
    eval_metrics: dict[str, float] | None
    events: dict[str, int]
    checkpoint: Path | None


# ----------------------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Run `train-student` in this process (joining torchrun's group when there is one); rank 0 reports progress
    (steps, a note with the loss terms, learning rate and images/s; checkpoint, evaluation and resume messages)."""
    context = init_distributed()
    try:
        device = runtime.resolve_device(config.device, context.local_rank)
        return Trainer(config, context, device, progress).run()
    finally:
        context.close()


def _dummy_batch(device: torch.device) -> TrainingBatch:
    """One blank image with an empty prompt, for a rank whose samples were all skipped (its loss is scaled by 0
    so that it still joins DDP's gradient all-reduce without changing the result)."""
    return TrainingBatch(torch.zeros(1, 3, 64, 64, device=device), [(64, 64)],
                         torch.tensor([[101, 102, 0]], device=device), torch.tensor([[1, 1, 0]], device=device),
                         [GroundingTargets(torch.zeros(0, 4, device=device), torch.zeros(0, 3, device=device))],
                         ["<empty>"], ["<empty>"])


class Trainer:
    """Holds the model, optimiser, data and bookkeeping of one run; `run()` trains to `steps`."""

    def __init__(self, config: TrainConfig, context: DistributedContext, device: torch.device,
                 progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.context = context
        self.device = device
        self.progress = progress
        self.out = Path(config.out)
        self.events: Counter = Counter()
        self.last_losses: dict[str, float] = {}
        self.eval_metrics: dict[str, float] | None = None
        self.last_checkpoint: Path | None = None
        self._updating = False
        self.started = time.perf_counter()
        self.steps = 0
        self.note = ""  # the progress note: the last logged loss terms, learning rate and images/s

    # -- setup ------------------------------------------------------------------------------------------------------

    def _emit(self, done: int, message: str = "") -> None:
        if self.progress is not None and self.context.is_main:
            self.progress(ProgressEvent(TASK, done, self.steps, "steps", time.perf_counter() - self.started,
                                        note=self.note, message=message))

    def _setup(self) -> None:
        from glipkit.model.hub import load_tokenizer

        cfg = self.config
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        if cfg.batch_size < 1 or cfg.accumulate < 1:
            raise ValueError("--batch-size and --accumulate must be at least 1")
        if cfg.val and not cfg.val_images:
            raise ValueError("--val needs --val-images")
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.model = runtime.load_model(cfg.model, self.tokenizer, self.device, cfg.model_options, cfg.seed)
        self.trainable = apply_tuning(self.model, cfg.tune)
        if cfg.tune == "full" and cfg.freeze_backbone_at >= 0:
            self.model.backbone.freeze(cfg.freeze_backbone_at)
            self.trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if cfg.checkpoint_fusion:
            enable_fusion_checkpointing(self.model)
        self.model.to(self.device)

        self.mixture = build_mixture(cfg.data, self.tokenizer, cfg.seed)
        world = self.context.world_size
        samples_per_step = cfg.batch_size * world * cfg.accumulate
        if cfg.steps is None:
            if cfg.epochs is None:
                raise ValueError("give --steps or --epochs")
            total = sum(len(s) for s in self.mixture.sources)
            self.steps = max(1, math.ceil(cfg.epochs * total / samples_per_step))
        else:
            self.steps = int(cfg.steps)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(2000, self.steps // 10)
        self.schedule = ScheduleSettings(self.steps, cfg.schedule, warmup, cfg.warmup_factor, cfg.milestones)
        self.optimizer = build_optimizer(self.model, OptimizerSettings(cfg.lr, cfg.lang_lr, cfg.weight_decay))
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = WeightEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.loss_fn = GroundingLoss()
        self.start_step = 0
        if cfg.resume:
            self._resume(checkpoints.resolve_resume(cfg.resume, cfg.out))

        self.ddp = self.model
        if self.context.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=False)
        batches = build_batches(self.mixture, cfg.data, self.model.config, self.tokenizer, cfg.batch_size, cfg.seed,
                                self.context.rank, world, self.start_step * cfg.accumulate,
                                self.steps * cfg.accumulate)
        self.loader = torch.utils.data.DataLoader(
            batches, batch_size=None, num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if cfg.workers else None)

        self.out.mkdir(parents=True, exist_ok=True)
        if self.context.is_main:
            write_json_atomic(self.out / CONFIG_FILE, self._run_record())

    def _run_record(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "world_size": self.context.world_size, "steps_total": self.steps,
                "trainable_parameters": len(self.trainable),
                "sources": {s.name: len(s) for s in self.mixture.sources}, "mix_weights": self.mixture.weights}

    def _resume(self, checkpoint: Path) -> None:
        from glipkit.model.weights import load_state_dict_checked

        state = checkpoints.read_state(checkpoint)
        changed = changed_run_options(state.get("config", {}), self.config, self.steps)
        if state.get("world_size", 1) != self.context.world_size:
            changed.append(f"world size ({state.get('world_size')} -> {self.context.world_size})")
        if changed:
            raise ValueError(f"--resume {checkpoint}: the run was started with other {', '.join(map(str, changed))}; "
                             "resume with the same options or start a new --out")
        load_state_dict_checked(self.model, checkpoints.read_weights(checkpoint / checkpoints.MODEL_FILE))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            ema_path = checkpoint / checkpoints.EMA_FILE
            if not ema_path.is_file():
                raise ValueError(f"--resume {checkpoint}: EMA is on but the checkpoint has no {ema_path.name}")
            weights = checkpoints.read_weights(ema_path)
            self.ema.load_shadow({k: v.to(self.device) for k, v in weights.items()})
        self.start_step = int(state["step"])
        self.events.update(state.get("events", {}))
        self.last_checkpoint = checkpoint
        self._emit(self.start_step, message=f"resumed from {checkpoint} at step {self.start_step}")

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def _state(self, step: int) -> dict[str, Any]:
        global_index = step * self.config.accumulate * self.config.batch_size * self.context.world_size
        return {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "data": {"micro_step": step * self.config.accumulate, "sample": global_index,
                     "positions": self.mixture.positions(global_index)},
            "config": {**self.config.to_dict(), "steps_total": self.steps},
            "world_size": self.context.world_size,
            "events": dict(self.events),
        }

    def save_checkpoint(self, step: int) -> Path | None:
        """Write checkpoint `step` from rank 0 (the others wait)."""
        path = None
        if self.context.is_main:
            ema_state = self.ema.state_dict_for(self.model) if self.ema is not None else None
            metadata = {"glipkit_command": "train-student", "step": str(step)}
            path = checkpoints.write_checkpoint(self.out, step, self.model, self._state(step), ema_state, metadata,
                                                keep=self.config.keep_checkpoints)
            self.last_checkpoint = path
            self._emit(step, message=f"checkpoint {path}")
        self.context.barrier()
        return path

    def _weights_for_eval(self):
        return self.model if self.ema is None else self.ema.averaged_model(self.model)

    def evaluate(self, step: int) -> dict[str, float] | None:
        """COCO AP on --val from rank 0 (EMA weights when EMA is on); appended to metrics.jsonl."""
        cfg = self.config
        metrics = None
        if self.context.is_main:
            from glipkit.engine.evaluation.validation import evaluate_coco_set

            metrics = evaluate_coco_set(self._weights_for_eval(), cfg.val, cfg.val_images, cfg.val_max_images,
                                        self.precision)
            self.eval_metrics = metrics
            self._log({"event": "eval", "step": step, "metrics": metrics})
            self._emit(step, message=f"step {step}: AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  "
                                     f"AP75 {metrics['AP75']:.3f}")
        set_train_mode(self.model, cfg.tune)
        self.context.barrier()
        return metrics

    def _log(self, record: dict[str, Any]) -> None:
        if self.context.is_main:
            with open(self.out / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # -- steps ----------------------------------------------------------------------------------------------------

    def _seed_step(self, step: int) -> None:
        # Dropout, DropBlock and drop path draw from torch's RNG: seeding it per (seed, step, rank) makes every
        # step repeatable on its own, so a resumed run continues with exactly the numbers of an uninterrupted one.
        torch.manual_seed((self.config.seed * 1_000_003 + step) * 1009 + self.context.rank)

    def _global_sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.context.world_size > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def _micro_step(self, batch: TrainingBatch, last: bool) -> dict[str, float] | None:
        """Forward and backward of one micro-batch; None when no rank had an image."""
        local_images = len(batch)
        (global_images,) = self._global_sum([float(local_images)])
        if global_images == 0:
            return None
        if local_images == 0:
            batch = _dummy_batch(self.device)
        sync = contextlib.nullcontext() if last or self.context.world_size == 1 else self.ddp.no_sync()
        with sync:
            with runtime.autocast(self.device, self.precision):
                outputs = self.ddp(batch.images, batch.input_ids, batch.attention_mask)
            anchors = self.model.anchors(outputs.tower_features)
            losses = self.loss_fn(outputs, anchors, batch.targets, batch.attention_mask)
            weight = (1.0 if local_images else 0.0) / self.config.accumulate
            values = {k: float(v.detach()) * (1.0 if local_images else 0.0) for k, v in losses.items()}
            (bad,) = self._global_sum([0.0 if all(math.isfinite(v) for v in values.values()) else 1.0])
            if bad:
                raise TrainingDiverged(self._diverged_message("the loss", values))
            self.scaler.scale(losses["loss"] * weight).backward()
        return values

    def _diverged_message(self, what: str, values: dict[str, float]) -> str:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else \
            "no checkpoint was written yet"
        return (f"{what} became NaN/inf at step {self.current_step + 1} ({terms}); training stopped and {kept}. "
                "Try a lower --lr, --precision fp32 or bf16, or --clip-grad 1.0")

    def _optimizer_step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.config.clip_grad if self.config.clip_grad > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, clip))
        if not math.isfinite(norm) and not self.scaler.is_enabled():
            raise TrainingDiverged(self._diverged_message("the gradient norm", {"grad_norm": norm}))
        self._updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._updating = False
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return norm

    def run(self) -> TrainResult:
        self._setup()
        cfg = self.config
        sources = ", ".join(f"{s.name} {len(s)}" for s in self.mixture.sources)
        self._emit(self.start_step, message=f"sources: {sources}; {len(self.trainable)} trainable tensors; "
                                            f"{self.context.world_size} process(es)")
        self._log({"event": "start", "start_step": self.start_step, "steps": self.steps,
                   "world_size": self.context.world_size, "time": time.time()})
        self.current_step = self.start_step
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        try:
            self._loop()
        except KeyboardInterrupt:
            # Save the last finished step unless the interrupt hit the optimiser update itself.
            if not self._updating and self.current_step > self.start_step:
                self.save_checkpoint(self.current_step)
            raise TrainingInterrupted(f"interrupted at step {self.current_step}; resume with --resume "
                                      f"{self.last_checkpoint or self.out}") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

        weights = self.out / FINAL_WEIGHTS
        if self.context.is_main:
            final = self._weights_for_eval()
            final.save_pretrained(weights, {"glipkit_command": "train-student", "step": str(self.steps),
                                            "ema": str(self.ema is not None)})
            if hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(str(self.out / TOKENIZER_DIR))
        self.context.barrier()
        if cfg.val and (cfg.eval_every <= 0 or self.steps % cfg.eval_every != 0):
            self.evaluate(self.steps)
        self._log({"event": "end", "step": self.steps, "events": dict(self.events), "time": time.time()})
        return TrainResult(self.out, weights, self.steps, self.last_losses, self.eval_metrics, dict(self.events),
                           self.last_checkpoint)

    def _loop(self) -> None:
        cfg = self.config
        batches = iter(self.loader)
        started = time.perf_counter()
        window_images, window_start = 0.0, time.perf_counter()
        sums: dict[str, float] = {}
        window_steps = 0
        empty_in_a_row = 0
        for step in range(self.start_step, self.steps):
            self._seed_step(step)
            set_train_mode(self.model, cfg.tune)
            step_values: dict[str, float] = {}
            images = 0
            for micro in range(cfg.accumulate):
                batch = next(batches)
                self.events.update(batch.events)
                self._write_skipped(batch)
                images += len(batch)
                values = self._micro_step(batch.to(self.device), last=micro == cfg.accumulate - 1)
                for key, value in (values or {}).items():
                    step_values[key] = step_values.get(key, 0.0) + value / cfg.accumulate
            total_images = self._global_sum([float(images)])[0]
            if total_images == 0:
                empty_in_a_row += 1
                if empty_in_a_row >= 20:
                    raise RuntimeError(f"no usable sample in 20 steps in a row (up to step {step + 1}); skipped "
                                       f"so far: {dict(self.events)}; see {self.out / SKIPPED_FILE}")
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.current_step = step + 1
                self._emit(self.current_step)
                continue
            empty_in_a_row = 0
            grad_norm = self._optimizer_step()
            lr = cfg.lr * lr_factor(step, self.schedule)
            self.scheduler.step()
            self.current_step = step + 1

            keys = sorted(step_values)
            averaged = self._global_sum([step_values[k] for k in keys])
            for key, value in zip(keys, averaged):
                sums[key] = sums.get(key, 0.0) + value / self.context.world_size
            window_steps += 1
            window_images += total_images
            done = step + 1
            if done % cfg.log_every == 0 or done == self.steps:
                elapsed = time.perf_counter() - window_start
                rate = window_images / max(elapsed, 1e-9)
                losses = {k: v / window_steps for k, v in sums.items()}
                per_step = (time.perf_counter() - started) / max(1, done - self.start_step)
                record = {"event": "step", "step": done, "steps": self.steps, **losses,
                          "lr": lr, "grad_norm": grad_norm,
                          "images_per_s": rate, "eta_s": per_step * (self.steps - done),
                          "skipped": sum(v for k, v in self.events.items() if k.startswith("skipped"))}
                self.last_losses = losses
                self._log(record)
                self.note = _step_note(record)
                sums, window_steps, window_images, window_start = {}, 0, 0.0, time.perf_counter()
            self._emit(done)
            if cfg.save_every > 0 and done % cfg.save_every == 0 or done == self.steps:
                self.save_checkpoint(done)
            if cfg.val and cfg.eval_every > 0 and done % cfg.eval_every == 0:
                self.evaluate(done)

    def _write_skipped(self, batch: TrainingBatch) -> None:
        if batch.skipped:
            with open(self.out / f"{SKIPPED_FILE}.rank{self.context.rank}" if self.context.rank else
                      self.out / SKIPPED_FILE, "a", encoding="utf-8") as handle:
                for reason, key in batch.skipped:
                    handle.write(json.dumps({"step": batch.step, "key": key, "reason": reason}) + "\n")


def _step_note(record: dict[str, Any]) -> str:
    """The progress note of a metrics record: loss terms, learning rate, images/s and skipped samples."""
    terms = " ".join(f"{k.replace('loss_', '').replace('dot_product_', '')}={record[k]:.3f}"
                     for k in sorted(record) if k.startswith("loss"))
    note = f"{terms} lr={record['lr']:.2e} {record['images_per_s']:.1f} img/s"
    return note + (f" skipped={record['skipped']}" if record["skipped"] else "")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
