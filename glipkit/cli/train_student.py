"""`glipkit train-student`: train a GLIP on gold detection/grounding data and the teacher's pseudo-labels."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import fail


class Tune(str, Enum):
    full = "full"
    prompt = "prompt"
    linear = "linear"


class Schedule(str, Enum):
    step = "step"
    cosine = "cosine"
    constant = "constant"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class BoxPolicy(str, Enum):
    clip = "clip"
    skip = "skip"


class PseudoPrompt(str, Enum):
    auto = "auto"
    caption = "caption"
    classes = "classes"


def _sizes(value: Optional[str], flag: str) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) <= 0:
        fail(f"{flag} must be positive integers separated by commas, e.g. 480,560,640,720,800")
    return sizes


def _options(values: List[str]) -> dict[str, str]:
    options = {}
    for value in values:
        name, sep, raw = value.partition("=")
        if not sep or not name.strip():
            fail(f"--model-option {value!r} must be SECTION.FIELD=VALUE, e.g. input.train_min_sizes=[96,128]")
        options[name.strip()] = raw.strip()
    return options


@app.command("train-student")
def train_student_command(
    out: Path = typer.Option(..., "--out", help="Run directory: checkpoints/, model.safetensors, metrics.jsonl."),
    model: str = typer.Option(
        "glip-t", "--model",
        help="Start from glip-t, glip-t-a, glip-t-c, glip-l (official weights), a .pth/.safetensors checkpoint, or "
        "train from scratch: preset:NAME (glip-small and glip-tiny-test train on a CPU).",
    ),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", metavar="DIR",
                                            help="Tokenizer directory (default: bert-base-uncased from the Hub)."),
    model_option: List[str] = typer.Option(
        [], "--model-option", metavar="SECTION.FIELD=VALUE",
        help="Change the model config, e.g. input.train_min_sizes=[96,128] or language.vocab_size=200 (presets: "
        "any field; checkpoints: input.*, postprocess.*, head.fpn_drop_block). Repeatable.",
    ),
    gold: Optional[Path] = typer.Option(None, "--gold", help="Gold detection: COCO json (class-name prompts, §4.5)."),
    gold_images: Optional[Path] = typer.Option(None, "--gold-images", help="Image directory of --gold."),
    grounding: Optional[Path] = typer.Option(None, "--grounding",
                                             help="Gold grounding: MDETR-style json (caption + tokens_positive)."),
    grounding_images: Optional[Path] = typer.Option(None, "--grounding-images", help="Image directory of --grounding."),
    odvg: Optional[Path] = typer.Option(None, "--odvg", help="Gold data as ODVG jsonl (OD and VG records)."),
    odvg_images: Optional[Path] = typer.Option(None, "--odvg-images", help="Image directory of --odvg."),
    odvg_label_map: Optional[Path] = typer.Option(None, "--odvg-label-map", help="ODVG label map json."),
    pseudo: Optional[Path] = typer.Option(None, "--pseudo", help="pseudo-label output directory (<shard>.parquet)."),
    pseudo_shards: Optional[str] = typer.Option(
        None, "--pseudo-shards", metavar="SPEC",
        help="Where the labelled shards are (default: the tables' shard column); matched by shard name.",
    ),
    pseudo_min_score: float = typer.Option(0.0, "--pseudo-min-score", min=0.0, max=1.0,
                                           help="Drop pseudo boxes below this score."),
    pseudo_min_boxes: int = typer.Option(1, "--pseudo-min-boxes", min=0,
                                         help="Drop images with fewer pseudo boxes (after the other filters)."),
    pseudo_nms: Optional[float] = typer.Option(None, "--pseudo-nms", min=0.01, max=1.0,
                                               help="Per-phrase NMS IoU applied to pseudo boxes."),
    pseudo_max_boxes: Optional[int] = typer.Option(None, "--pseudo-max-boxes", min=1,
                                                   help="Keep the best N pseudo boxes per image."),
    pseudo_agnostic_nms: Optional[float] = typer.Option(
        None, "--pseudo-agnostic-nms", min=0.01, max=1.0,
        help="NMS IoU across phrases: one label per object, the teacher's best (GLIP's NMS is per phrase).",
    ),
    pseudo_prompt: PseudoPrompt = typer.Option(
        PseudoPrompt.auto, "--pseudo-prompt",
        help="caption: the row's caption grounds its phrases; classes: GLIP's detection prompt from the phrase "
        "texts with sampled negatives; auto: caption when the phrases are spans of the caption.",
    ),
    mix: Optional[str] = typer.Option(None, "--mix", metavar="NAME=R,...",
                                      help="Sampling ratio of the sources, e.g. gold=1,pseudo=3 (default equal)."),
    shots: Optional[int] = typer.Option(None, "--shots", min=1, help="Few-shot: about K gold images per class."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, sampling, augmentation and few-shot."),
    tune: Tune = typer.Option(Tune.full, "--tune", help="full, prompt (GLIP prompt tuning) or linear (probing)."),
    freeze_backbone_at: int = typer.Option(-1, "--freeze-backbone-at",
                                           help="Freeze Swin up to this GLIP stage (-1: none; ODinW full uses 2)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps."),
    epochs: Optional[float] = typer.Option(None, "--epochs", min=0.0, help="Or: passes over the sources."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Images per process per micro-step."),
    accumulate: int = typer.Option(1, "--accumulate", min=1, help="Micro-steps per optimiser step."),
    lr: float = typer.Option(1e-4, "--lr", help="Base learning rate (GLIP: 1e-4 pretraining, 1e-5 COCO fine-tune)."),
    lang_lr: float = typer.Option(1e-5, "--lang-lr", help="Learning rate of the BERT language backbone."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", min=0.0, help="AdamW weight decay (not on biases)."),
    schedule: Schedule = typer.Option(Schedule.step, "--schedule", help="After warmup: step (x0.1 at 67%/89%), "
                                      "cosine, or constant."),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, show_default="min(2000, steps/10)",
                                         help="Linear warmup steps from 0.001 x LR."),
    clip_grad: float = typer.Option(1.0, "--clip-grad", min=0.0, help="Gradient L2-norm clip (0: off)."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="Autocast precision (fp16 uses a "
                                        "gradient scaler)."),
    ema: float = typer.Option(0.0, "--ema", min=0.0, max=0.99999, help="EMA decay of the weights (0: off; "
                              "GLIP-T used 0.999). Checkpoints and evaluation then use the averaged weights."),
    checkpoint_fusion: bool = typer.Option(False, "--checkpoint-fusion",
                                           help="Activation checkpointing of the fusion layers (saves memory)."),
    train_sizes: Optional[str] = typer.Option(None, "--train-sizes", metavar="S1,S2,...",
                                              show_default="the model's input.train_min_sizes",
                                              help="Short sides for multi-scale training."),
    max_size: Optional[int] = typer.Option(None, "--max-size", min=32, show_default="the model's input.max_size",
                                           help="Longest side when training."),
    flip_prob: float = typer.Option(0.5, "--flip-prob", min=0.0, max=1.0, help="Horizontal flip probability."),
    box_policy: BoxPolicy = typer.Option(BoxPolicy.clip, "--bad-boxes",
                                         help="Boxes outside their image: clip them, or skip them (counted)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes per process."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Steps between metrics.jsonl lines."),
    save_every: int = typer.Option(500, "--save-every", min=0, help="Steps between checkpoints (0: only the end)."),
    keep: int = typer.Option(2, "--keep", min=0, help="Checkpoints kept (0: all)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="auto|DIR",
        help="Continue a run exactly: auto (the latest checkpoint in --out), a run directory or a checkpoint.",
    ),
    val: Optional[Path] = typer.Option(None, "--val", help="COCO json evaluated periodically (box AP)."),
    val_images: Optional[Path] = typer.Option(None, "--val-images", help="Image directory of --val."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Steps between evaluations (0: at the end)."),
    val_max_images: Optional[int] = typer.Option(None, "--val-max-images", min=1, help="Evaluate on the first N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress display on stderr (rank 0)."),
) -> None:
    """Train a GLIP student on gold and pseudo-labelled data.

    Writes OUT/model.safetensors (final weights), OUT/checkpoints/step-N/ (weights + resumable state),
    OUT/metrics.jsonl and OUT/tokenizer/. Several GPUs or CPU processes: torchrun --nproc-per-node N -m glipkit
    train-student ... (DDP; --batch-size is per process).

    Exit code 1 when the loss diverges (the last good checkpoint is kept), 2 for errors you can fix.
    """
    from glipkit.cli.common import user_errors
    from glipkit.engine.training_data import DataOptions

    if steps is None and epochs is None:
        fail("give --steps or --epochs")
    data = DataOptions(
        gold=str(gold) if gold else None, gold_images=str(gold_images) if gold_images else None,
        grounding=str(grounding) if grounding else None,
        grounding_images=str(grounding_images) if grounding_images else None,
        odvg=str(odvg) if odvg else None, odvg_images=str(odvg_images) if odvg_images else None,
        odvg_label_map=str(odvg_label_map) if odvg_label_map else None,
        pseudo=str(pseudo) if pseudo else None, pseudo_shards=pseudo_shards, pseudo_min_score=pseudo_min_score,
        pseudo_min_boxes=pseudo_min_boxes, pseudo_nms=pseudo_nms, pseudo_max_boxes=pseudo_max_boxes,
        pseudo_agnostic_nms=pseudo_agnostic_nms, pseudo_prompt=pseudo_prompt.value, mix=mix, shots=shots,
        box_policy=box_policy.value,
        train_min_sizes=_sizes(train_sizes, "--train-sizes"), max_size=max_size, flip_prob=flip_prob,
    )
    from glipkit.engine.trainer import TrainConfig

    config = TrainConfig(
        out=str(out), model=model, tokenizer=tokenizer, model_options=_options(model_option), data=data,
        tune=tune.value, freeze_backbone_at=freeze_backbone_at, steps=steps, epochs=epochs, batch_size=batch_size,
        accumulate=accumulate, lr=lr, lang_lr=lang_lr, weight_decay=weight_decay, schedule=schedule.value,
        warmup_steps=warmup, clip_grad=clip_grad, precision=precision.value, ema_decay=ema,
        checkpoint_fusion=checkpoint_fusion, seed=seed, device=device, workers=workers, log_every=log_every,
        save_every=save_every, keep_checkpoints=keep, resume=resume, val=str(val) if val else None,
        val_images=str(val_images) if val_images else None, eval_every=eval_every, val_max_images=val_max_images,
    )
    from glipkit.engine.trainer import TrainingDiverged, TrainingInterrupted, train

    display = _TrainDisplay(enabled=progress and int(os.environ.get("RANK", "0")) == 0)
    try:
        with user_errors():
            with display:
                result = train(config, progress=display.update)
    except TrainingDiverged as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    except TrainingInterrupted as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(130)
    display.summary(result)


class _TrainDisplay:
    """A rich progress bar (step, loss terms, lr, images/s, ETA) and one line per checkpoint and evaluation."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None
        from rich.console import Console

        self.console = Console(stderr=True)

    def __enter__(self) -> "_TrainDisplay":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, record: dict) -> None:
        event = record.get("event")
        if event == "start" and self.progress is not None:
            self.task = self.progress.add_task("train", total=record["steps"], completed=record["start_step"],
                                               info="")
            sources = ", ".join(f"{k} {v}" for k, v in record["sources"].items())
            self.console.log(f"sources: {sources}; {record['trainable_parameters']} trainable tensors; "
                             f"{record['world_size']} process(es)")
        elif event == "step" and self.progress is not None and self.task is not None:
            terms = " ".join(f"{k.replace('loss_', '').replace('dot_product_', '')}={record[k]:.3f}"
                             for k in sorted(record) if k.startswith("loss"))
            info = f"{terms} lr={record['lr']:.2e} {record['images_per_s']:.1f} img/s"
            if record.get("skipped"):
                info += f" skipped={record['skipped']}"
            self.progress.update(self.task, completed=record["step"], info=info)
        elif event == "checkpoint" and self.enabled:
            self.console.log(f"checkpoint {record['path']}")
        elif event == "resume" and self.enabled:
            self.console.log(f"resumed from {record['checkpoint']} at step {record['step']}")
        elif event == "eval" and self.enabled:
            metrics = record["metrics"]
            self.console.log(f"step {record['step']}: AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  "
                             f"AP75 {metrics['AP75']:.3f}")

    def summary(self, result) -> None:
        self.console.print(f"weights: {result.weights}")
        if result.eval_metrics:
            self.console.print(f"AP {result.eval_metrics['AP']:.4f}  AP50 {result.eval_metrics['AP50']:.4f}")
        skipped = {k: v for k, v in result.events.items() if k.startswith("skipped")}
        if skipped:
            self.console.print(f"skipped samples: {skipped}")
