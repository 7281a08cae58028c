"""What a `train-student` run is made of: the model, the data and the optimisation settings, by name."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS

# Options that define which samples and updates step s is made of: a resumed run must not change them.
RUN_DEFINING = ("model", "tune", "batch_size", "accumulate", "seed", "steps", "data")


@dataclass
class DataOptions:
    """Where the training data is and how it is read. Source names in `mix`: gold, grounding, odvg, pseudo."""

    gold: str | None = None  # COCO detection json
    gold_images: str | None = None
    grounding: str | None = None  # MDETR-style json (caption + tokens_positive)
    grounding_images: str | None = None
    odvg: str | None = None  # ODVG jsonl
    odvg_images: str | None = None
    odvg_label_map: str | None = None
    pseudo: str | None = None  # pseudo-label output directory (or tables)
    pseudo_shards: str | None = None  # where the labelled shards are (default: the tables' `shard` column)
    pseudo_min_score: float = 0.0
    pseudo_min_boxes: int = 1
    pseudo_nms: float | None = None
    pseudo_max_boxes: int | None = None
    pseudo_agnostic_nms: float | None = None
    pseudo_prompt: str = "auto"
    # Self-training recipes (off by default): data/pseudo.PseudoRecipe and negative caption packing (collate).
    pseudo_box_loss: float = 1.0
    pseudo_score_weights: bool = False
    pseudo_negatives: bool = False
    pack_negative_captions: bool = False
    mix: str | None = None  # e.g. "gold=1,pseudo=3"
    shots: int | None = None  # K images per class of the gold detection set
    box_policy: str = "clip"
    train_min_sizes: tuple[int, ...] | None = None  # default: the model's input.train_min_sizes
    max_size: int | None = None  # default: the model's input.max_size
    flip_prob: float = 0.5
    shuffle_chunk: int = 1000
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # the decoder's pixel limit, as in pseudo-label (0: none)


@dataclass
class TrainConfig:
    """Everything `train-student` needs. Learning-rate defaults are GLIP's (§8.6)."""

    out: str
    model: str = "glip-t"  # named official model, .pth / .safetensors path, or preset:NAME (random init)
    tokenizer: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"input.train_min_sizes": [480, 800]}
    data: DataOptions = field(default_factory=DataOptions)
    tune: str = "full"  # full | prompt | linear
    freeze_backbone_at: int = -1  # BACKBONE.FREEZE_CONV_BODY_AT (full tuning)
    steps: int | None = None  # optimiser steps; or derived from epochs
    epochs: float | None = None
    batch_size: int = 2  # images per process per micro-step
    accumulate: int = 1  # micro-steps per optimiser step
    lr: float = 1e-4
    lang_lr: float = 1e-5
    weight_decay: float = 1e-4
    schedule: str = "step"  # step | cosine | constant
    warmup_steps: int | None = None  # default: min(2000, steps // 10)
    warmup_factor: float = 0.001
    milestones: tuple[float, ...] = (0.67, 0.89)
    clip_grad: float = 1.0  # 0 = off
    precision: str = "fp32"  # auto | fp32 | bf16 | fp16 (runtime.resolve_precision)
    ema_decay: float = 0.0  # 0 = no EMA; GLIP-T pretraining used 0.999
    checkpoint_fusion: bool = False  # activation checkpointing of the fusion layers (cfg.head.use_checkpoint)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: str | None = None  # checkpoint dir, run dir, or "auto" (this run's out dir)
    val: str | None = None  # COCO json for periodic evaluation
    val_images: str | None = None
    eval_every: int = 0  # 0 = only at the end (when val is given)
    val_max_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def changed_run_options(saved: dict[str, Any], config: TrainConfig, steps: int) -> list[str]:
    """The RUN_DEFINING options of a checkpoint's `saved` config that `config` changes (`steps` may differ when
    the total it resolves to does not)."""
    mine = config.to_dict()
    return [k for k in RUN_DEFINING if k in saved and saved[k] != mine[k] and not (
        k == "steps" and saved.get("steps_total") == steps)]
