"""From `train-student` data options to a source mixture and this rank's batch stream."""

from __future__ import annotations

from dataclasses import dataclass

from glipkit.data.augment import TrainTransform
from glipkit.data.coco_detection import CocoDetectionSource, read_coco_detection
from glipkit.data.collate import GroundingCollator
from glipkit.data.few_shot import few_shot_image_ids
from glipkit.data.mdetr_grounding import MdetrGroundingSource
from glipkit.data.mixture import SourceMixture, parse_mix
from glipkit.data.odvg import OdvgSource
from glipkit.data.pseudo import PseudoFilter, PseudoLabelSource
from glipkit.data.training_stream import TrainingBatches


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
    mix: str | None = None  # e.g. "gold=1,pseudo=3"
    shots: int | None = None  # K images per class of the gold detection set
    box_policy: str = "clip"
    train_min_sizes: tuple[int, ...] | None = None  # default: the model's input.train_min_sizes
    max_size: int | None = None  # default: the model's input.max_size
    flip_prob: float = 0.5
    shuffle_chunk: int = 1000


def _need(value, flag: str, other: str) -> None:
    if value is None:
        raise ValueError(f"{flag} needs {other}")


def build_sources(options: DataOptions, tokenizer, seed: int) -> dict:
    """The named sources the options ask for; ValueError when none or when a path pair is incomplete."""
    sources: dict = {}
    if options.gold:
        _need(options.gold_images, "--gold", "--gold-images")
        image_ids = None
        if options.shots:
            _, images = read_coco_detection(options.gold)
            image_ids = few_shot_image_ids(images, options.shots, seed)
        sources["gold"] = CocoDetectionSource(options.gold, options.gold_images, tokenizer, name="gold",
                                              box_policy=options.box_policy, image_ids=image_ids)
    elif options.shots:
        raise ValueError("--shots samples from the gold detection set: give --gold")
    if options.grounding:
        _need(options.grounding_images, "--grounding", "--grounding-images")
        sources["grounding"] = MdetrGroundingSource(options.grounding, options.grounding_images, name="grounding",
                                                    box_policy=options.box_policy)
    if options.odvg:
        _need(options.odvg_images, "--odvg", "--odvg-images")
        sources["odvg"] = OdvgSource(options.odvg, options.odvg_images, tokenizer, label_map=options.odvg_label_map,
                                     name="odvg", box_policy=options.box_policy)
    if options.pseudo:
        filters = PseudoFilter(options.pseudo_min_score, options.pseudo_min_boxes, options.pseudo_nms,
                               options.pseudo_max_boxes, options.pseudo_agnostic_nms)
        sources["pseudo"] = PseudoLabelSource(options.pseudo, tokenizer, shards=options.pseudo_shards, name="pseudo",
                                              filters=filters, prompt=options.pseudo_prompt,
                                              box_policy=options.box_policy, shuffle_chunk=options.shuffle_chunk)
    if not sources:
        raise ValueError("no training data: give --gold, --grounding, --odvg and/or --pseudo")
    return sources


def build_mixture(options: DataOptions, tokenizer, seed: int) -> SourceMixture:
    """The sources mixed by `--mix` (equal ratios when not given)."""
    sources = build_sources(options, tokenizer, seed)
    return SourceMixture.from_mix(sources, parse_mix(options.mix) if options.mix else None)


def build_batches(mixture: SourceMixture, options: DataOptions, model_config, tokenizer, batch_size: int, seed: int,
                  rank: int, world_size: int, start_step: int, max_steps: int) -> TrainingBatches:
    """This rank's batches for micro-steps start_step..max_steps-1."""
    transform = TrainTransform(model_config.input, options.train_min_sizes, options.max_size, options.flip_prob)
    collator = GroundingCollator(tokenizer, model_config.language.max_query_len, model_config.input.size_divisibility)
    return TrainingBatches(mixture, transform, collator, batch_size, seed, rank=rank, world_size=world_size,
                           start_step=start_step, max_steps=max_steps)
