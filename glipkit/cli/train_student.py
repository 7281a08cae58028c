"""`glipkit train-student`: train a GLIP on gold detection/grounding data and the teacher's pseudo-labels."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from glipkit.cli.app import app
from glipkit.cli.common import (FILTERS, INPUT, MODEL, OUTPUT, SPEED, TRAINING, DeviceOption, MaxImagePixelsOption,
                                ModelOption, PrecisionOption, ProgressDisplay, ProgressOption, TokenizerOption,
                                check_options, fail, user_errors)
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS


def _choices(name: str, *values: str) -> type[Enum]:
    """A str Enum whose members are `values` (Typer shows them as the option's choices)."""
    return Enum(name, {value: value for value in values}, type=str)


Tune = _choices("Tune", "full", "prompt", "linear")
Schedule = _choices("Schedule", "step", "cosine", "constant")
BoxPolicy = _choices("BoxPolicy", "clip", "skip")
PseudoPrompt = _choices("PseudoPrompt", "auto", "caption", "classes")


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
    out: Path = typer.Option(..., "--out", rich_help_panel=OUTPUT,
                             help="Run directory: checkpoints/, model.safetensors, metrics.jsonl."),
    model: ModelOption = "glip-t",
    tokenizer: TokenizerOption = None,
    model_option: List[str] = typer.Option(
        [], "--model-option", rich_help_panel=MODEL, metavar="SECTION.FIELD=VALUE",
        help="Change the model config, e.g. input.train_min_sizes=[96,128] or language.vocab_size=200 (presets: "
        "any field; checkpoints: input.*, postprocess.*, head.fpn_drop_block). Repeatable.",
    ),
    gold: Optional[Path] = typer.Option(None, "--gold", rich_help_panel=INPUT,
                                        help="Gold detection: COCO json (class-name prompts, §4.5)."),
    gold_images: Optional[Path] = typer.Option(None, "--gold-images", rich_help_panel=INPUT,
                                               help="Image directory of --gold."),
    grounding: Optional[Path] = typer.Option(None, "--grounding", rich_help_panel=INPUT,
                                             help="Gold grounding: MDETR-style json (caption + tokens_positive)."),
    grounding_images: Optional[Path] = typer.Option(None, "--grounding-images", rich_help_panel=INPUT,
                                                    help="Image directory of --grounding."),
    odvg: Optional[Path] = typer.Option(None, "--odvg", rich_help_panel=INPUT,
                                        help="Gold data as ODVG jsonl (OD and VG records)."),
    odvg_images: Optional[Path] = typer.Option(None, "--odvg-images", rich_help_panel=INPUT,
                                               help="Image directory of --odvg."),
    odvg_label_map: Optional[Path] = typer.Option(None, "--odvg-label-map", rich_help_panel=INPUT,
                                                  help="ODVG label map json."),
    pseudo: Optional[Path] = typer.Option(None, "--pseudo", rich_help_panel=INPUT,
                                          help="pseudo-label output directory (<shard>.labels.parquet)."),
    pseudo_shards: Optional[str] = typer.Option(
        None, "--pseudo-shards", rich_help_panel=INPUT, metavar="SPEC",
        help="Where the labelled shards are (default: the tables' shard column); matched by shard name.",
    ),
    pseudo_min_score: float = typer.Option(0.0, "--pseudo-min-score", rich_help_panel=FILTERS, min=0.0, max=1.0,
                                           help="Drop pseudo boxes below this score."),
    pseudo_min_boxes: int = typer.Option(1, "--pseudo-min-boxes", rich_help_panel=FILTERS, min=0,
                                         help="Drop images with fewer pseudo boxes (after the other filters)."),
    pseudo_nms: Optional[float] = typer.Option(None, "--pseudo-nms", rich_help_panel=FILTERS, min=0.01, max=1.0,
                                               help="Per-phrase NMS IoU applied to pseudo boxes."),
    pseudo_max_boxes: Optional[int] = typer.Option(None, "--pseudo-max-boxes", rich_help_panel=FILTERS, min=1,
                                                   help="Keep the best N pseudo boxes per image."),
    pseudo_agnostic_nms: Optional[float] = typer.Option(
        None, "--pseudo-agnostic-nms", rich_help_panel=FILTERS, min=0.01, max=1.0,
        help="NMS IoU across phrases: one label per object, the teacher's best (GLIP's NMS is per phrase).",
    ),
    pseudo_prompt: PseudoPrompt = typer.Option(
        PseudoPrompt("auto"), "--pseudo-prompt", rich_help_panel=FILTERS,
        help="caption: the row's caption grounds its phrases; classes: GLIP's detection prompt from the phrase "
        "texts with sampled negatives; auto: caption when the phrases are spans of the caption.",
    ),
    pseudo_box_loss: float = typer.Option(
        1.0, "--pseudo-box-loss", rich_help_panel=FILTERS, min=0.0,
        help="Weight of the box-regression and centerness loss on pseudo boxes (0: classification only, "
        "as YOLO-World trains its pseudo boxes).",
    ),
    pseudo_score_weights: bool = typer.Option(
        False, "--pseudo-score-weights", rich_help_panel=FILTERS,
        help="Score-aware pseudo-labels: the token loss of each pseudo box times the teacher's score.",
    ),
    pseudo_negatives: bool = typer.Option(
        False, "--pseudo-negatives", rich_help_panel=FILTERS,
        help="Pseudo negatives (OWL-ST): classes prompts always name the classes the teacher was asked about and "
        "found no box for, as negatives of the token loss (caption prompts name them already).",
    ),
    pack_negative_captions: bool = typer.Option(
        False, "--pack-negative-captions", rich_help_panel=FILTERS,
        help="Negative caption packing (GLIP appendix C.1): caption prompts (grounding, caption-mode pseudo) get "
        "the batch's other captions appended as negatives, within the token limit.",
    ),
    mix: Optional[str] = typer.Option(None, "--mix", rich_help_panel=INPUT, metavar="NAME=R,...",
                                      help="Sampling ratio of the sources, e.g. gold=1,pseudo=3 (default equal)."),
    shots: Optional[int] = typer.Option(None, "--shots", rich_help_panel=INPUT,
                                        min=1, help="Few-shot: about K gold images per class."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=TRAINING,
                             help="Seed of initialisation, sampling, augmentation and few-shot."),
    tune: Tune = typer.Option(Tune("full"), "--tune", rich_help_panel=TRAINING,
                              help="full, prompt (GLIP prompt tuning) or linear (probing)."),
    freeze_backbone_at: int = typer.Option(-1, "--freeze-backbone-at", rich_help_panel=TRAINING,
                                           help="Freeze Swin up to this GLIP stage (-1: none; ODinW full uses 2)."),
    steps: Optional[int] = typer.Option(None, "--steps", rich_help_panel=TRAINING, min=1, help="Optimiser steps."),
    epochs: Optional[float] = typer.Option(None, "--epochs", rich_help_panel=TRAINING,
                                           min=0.0, help="Or: passes over the sources."),
    batch_size: int = typer.Option(2, "--batch-size", rich_help_panel=TRAINING,
                                   min=1, help="Images per process per micro-step."),
    accumulate: int = typer.Option(1, "--accumulate", rich_help_panel=TRAINING,
                                   min=1, help="Micro-steps per optimiser step."),
    lr: float = typer.Option(1e-4, "--lr", rich_help_panel=TRAINING,
                             help="Base learning rate (GLIP: 1e-4 pretraining, 1e-5 COCO fine-tune)."),
    lang_lr: float = typer.Option(1e-5, "--lang-lr", rich_help_panel=TRAINING,
                                  help="Learning rate of the BERT language backbone."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", rich_help_panel=TRAINING,
                                       min=0.0, help="AdamW weight decay (not on biases)."),
    schedule: Schedule = typer.Option(Schedule("step"), "--schedule", rich_help_panel=TRAINING,
                                      help="After warmup: step (x0.1 at 67%/89%), "
                                      "cosine, or constant."),
    warmup: Optional[int] = typer.Option(None, "--warmup", rich_help_panel=TRAINING,
                                         min=0, show_default="min(2000, steps/10)",
                                         help="Linear warmup steps from 0.001 x LR."),
    clip_grad: float = typer.Option(1.0, "--clip-grad", rich_help_panel=TRAINING,
                                    min=0.0, help="Gradient L2-norm clip (0: off)."),
    precision: PrecisionOption = "fp32",
    ema: float = typer.Option(0.0, "--ema", rich_help_panel=TRAINING,
                              min=0.0, max=0.99999, help="EMA decay of the weights (0: off; "
                              "GLIP-T used 0.999). Checkpoints and evaluation then use the averaged weights."),
    checkpoint_fusion: bool = typer.Option(False, "--checkpoint-fusion", rich_help_panel=SPEED,
                                           help="Activation checkpointing of the fusion layers (saves memory)."),
    train_sizes: Optional[str] = typer.Option(None, "--train-sizes", rich_help_panel=TRAINING, metavar="S1,S2,...",
                                              show_default="the model's input.train_min_sizes",
                                              help="Short sides for multi-scale training."),
    max_size: Optional[int] = typer.Option(None, "--max-size", rich_help_panel=TRAINING,
                                           min=32, show_default="the model's input.max_size",
                                           help="Longest side when training."),
    flip_prob: float = typer.Option(0.5, "--flip-prob", rich_help_panel=TRAINING,
                                    min=0.0, max=1.0, help="Horizontal flip probability."),
    box_policy: BoxPolicy = typer.Option(BoxPolicy("clip"), "--bad-boxes", rich_help_panel=INPUT,
                                         help="Boxes outside their image: clip them, or skip them (counted)."),
    max_image_pixels: MaxImagePixelsOption = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int = typer.Option(0, "--workers", rich_help_panel=SPEED,
                                min=0, help="DataLoader worker processes per process."),
    device: DeviceOption = "auto",
    log_every: int = typer.Option(10, "--log-every", rich_help_panel=OUTPUT,
                                  min=1, help="Steps between metrics.jsonl lines."),
    save_every: int = typer.Option(500, "--save-every", rich_help_panel=OUTPUT,
                                   min=0, help="Steps between checkpoints (0: only the end)."),
    keep: int = typer.Option(2, "--keep", rich_help_panel=OUTPUT, min=0, help="Checkpoints kept (0: all)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", rich_help_panel=OUTPUT, metavar="auto|DIR",
        help="Continue a run exactly: auto (the latest checkpoint in --out), a run directory or a checkpoint.",
    ),
    val: Optional[Path] = typer.Option(None, "--val", rich_help_panel=INPUT,
                                       help="COCO json evaluated periodically (box AP)."),
    val_images: Optional[Path] = typer.Option(None, "--val-images", rich_help_panel=INPUT,
                                              help="Image directory of --val."),
    eval_every: int = typer.Option(0, "--eval-every", rich_help_panel=TRAINING,
                                   min=0, help="Steps between evaluations (0: at the end)."),
    val_max_images: Optional[int] = typer.Option(None, "--val-max-images", rich_help_panel=TRAINING,
                                                 min=1, help="Evaluate on the first N."),
    progress: ProgressOption = True,
) -> None:
    """Train a GLIP student on gold and pseudo-labelled data.

    Writes OUT/model.safetensors (final weights), OUT/checkpoints/step-N/ (weights + resumable state),
    OUT/metrics.jsonl and OUT/tokenizer/. Several GPUs or CPU processes: torchrun --nproc-per-node N -m glipkit
    train-student ... (DDP; --batch-size is per process).

    Exit code 1 when the loss diverges (the last good checkpoint is kept), 2 for errors you can fix.
    """
    from glipkit.engine.training.config import DataOptions, TrainConfig
    from glipkit.engine.training.trainer import TrainingDiverged, TrainingInterrupted, train

    if steps is None and epochs is None:
        fail("give --steps or --epochs")
    data = DataOptions(
        gold=_text(gold), gold_images=_text(gold_images), grounding=_text(grounding),
        grounding_images=_text(grounding_images), odvg=_text(odvg), odvg_images=_text(odvg_images),
        odvg_label_map=_text(odvg_label_map), pseudo=_text(pseudo), pseudo_shards=pseudo_shards,
        pseudo_min_score=pseudo_min_score, pseudo_min_boxes=pseudo_min_boxes, pseudo_nms=pseudo_nms,
        pseudo_max_boxes=pseudo_max_boxes, pseudo_agnostic_nms=pseudo_agnostic_nms, pseudo_prompt=pseudo_prompt.value,
        pseudo_box_loss=pseudo_box_loss, pseudo_score_weights=pseudo_score_weights, pseudo_negatives=pseudo_negatives,
        pack_negative_captions=pack_negative_captions, mix=mix, shots=shots, box_policy=box_policy.value, train_min_sizes=_sizes(train_sizes, "--train-sizes"),
        max_size=max_size, flip_prob=flip_prob, max_image_pixels=max_image_pixels,
    )
    config = TrainConfig(
        out=str(out), model=model, tokenizer=tokenizer, model_options=_options(model_option), data=data,
        tune=tune.value, freeze_backbone_at=freeze_backbone_at, steps=steps, epochs=epochs, batch_size=batch_size,
        accumulate=accumulate, lr=lr, lang_lr=lang_lr, weight_decay=weight_decay, schedule=schedule.value,
        warmup_steps=warmup, clip_grad=clip_grad, precision=precision, ema_decay=ema,
        checkpoint_fusion=checkpoint_fusion, seed=seed, device=device, workers=workers, log_every=log_every,
        save_every=save_every, keep_checkpoints=keep, resume=resume, val=_text(val), val_images=_text(val_images),
        eval_every=eval_every, val_max_images=val_max_images,
    )
    with ProgressDisplay(enabled=progress and int(os.environ.get("RANK", "0")) == 0) as display:
        with user_errors(display):
            check_options(device, out=out)
            try:
                result = train(config, progress=display.update)
            except TrainingDiverged as error:
                display.stop()
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(1) from None
            except TrainingInterrupted as error:
                display.stop()
                typer.echo(str(error), err=True)
                raise typer.Exit(130) from None
    typer.echo(f"weights: {result.weights}", err=True)
    if result.eval_metrics:
        typer.echo(f"AP {result.eval_metrics['AP']:.4f}  AP50 {result.eval_metrics['AP50']:.4f}", err=True)
    skipped = {k: v for k, v in result.events.items() if k.startswith("skipped")}
    if skipped:
        typer.echo(f"skipped samples: {skipped}", err=True)


def _text(path: Optional[Path]) -> Optional[str]:
    return str(path) if path else None
