"""From `train-student` data options to a source mixture and this rank's batch stream."""

from __future__ import annotations

from glipkit.data.augment import TrainTransform
from glipkit.data.coco_detection import CocoDetectionSource, read_coco_detection
from glipkit.data.collate import GroundingCollator
from glipkit.data.few_shot import few_shot_image_ids
from glipkit.data.mdetr_grounding import MdetrGroundingSource
from glipkit.data.mixture import SourceMixture, parse_mix
from glipkit.data.odvg import OdvgSource
from glipkit.data.pseudo import PseudoFilter, PseudoLabelSource, PseudoRecipe
from glipkit.data.training_stream import TrainingBatches
from glipkit.engine.training.config import DataOptions


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
                                              box_policy=options.box_policy, image_ids=image_ids,
                                              max_image_pixels=options.max_image_pixels)
    elif options.shots:
        raise ValueError("--shots samples from the gold detection set: give --gold")
    if options.grounding:
        _need(options.grounding_images, "--grounding", "--grounding-images")
        sources["grounding"] = MdetrGroundingSource(options.grounding, options.grounding_images, name="grounding",
                                                    box_policy=options.box_policy,
                                                    max_image_pixels=options.max_image_pixels)
    if options.odvg:
        _need(options.odvg_images, "--odvg", "--odvg-images")
        sources["odvg"] = OdvgSource(options.odvg, options.odvg_images, tokenizer, label_map=options.odvg_label_map,
                                     name="odvg", box_policy=options.box_policy,
                                     max_image_pixels=options.max_image_pixels)
    if options.pseudo:
        filters = PseudoFilter(options.pseudo_min_score, options.pseudo_min_boxes, options.pseudo_nms,
                               options.pseudo_max_boxes, options.pseudo_agnostic_nms)
        recipe = PseudoRecipe(options.pseudo_box_loss, options.pseudo_score_weights, options.pseudo_negatives)
        sources["pseudo"] = PseudoLabelSource(options.pseudo, tokenizer, shards=options.pseudo_shards, name="pseudo",
                                              filters=filters, prompt=options.pseudo_prompt,
                                              box_policy=options.box_policy, shuffle_chunk=options.shuffle_chunk,
                                              max_image_pixels=options.max_image_pixels, recipe=recipe)
    if not sources:
        raise ValueError("no training data: give --gold, --grounding, --odvg and/or --pseudo")
    return sources


def caption_sources(sources) -> list[str]:
    """Names of the sources whose prompts are captions (negative caption packing applies to them)."""
    return [s.name for s in sources if isinstance(s, MdetrGroundingSource)
            or (isinstance(s, PseudoLabelSource) and s.prompt_mode == "caption")]


def build_mixture(options: DataOptions, tokenizer, seed: int) -> SourceMixture:
    """The sources mixed by `--mix` (equal ratios when not given)."""
    sources = build_sources(options, tokenizer, seed)
    return SourceMixture.from_mix(sources, parse_mix(options.mix) if options.mix else None)


def build_batches(mixture: SourceMixture, options: DataOptions, model_config, tokenizer, batch_size: int, seed: int,
                  rank: int, world_size: int, start_step: int, max_steps: int) -> TrainingBatches:
    """This rank's batches for micro-steps start_step..max_steps-1."""
    transform = TrainTransform(model_config.input, options.train_min_sizes, options.max_size, options.flip_prob)
    collator = GroundingCollator(tokenizer, model_config.language.max_query_len, model_config.input.size_divisibility,
                                 caption_sources(mixture.sources) if options.pack_negative_captions else ())
    return TrainingBatches(mixture, transform, collator, batch_size, seed, rank=rank, world_size=world_size,
                           start_step=start_step, max_steps=max_steps, max_image_pixels=options.max_image_pixels)
