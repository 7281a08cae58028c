"""GLIP's training prompt for detection data: positive classes plus sampled negatives (GLIP_SPEC.md §4.5)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from glipkit.data.grounding_example import GroundingExample
from glipkit.model.prompts import Span, build_detection_prompt, clean_name


@dataclass
class DetectionPromptConfig:
    """Constants of `od_to_grounding` in the pretrain configs (§4.5)."""

    max_negatives: int = 85  # DATASETS.RANDOM_SAMPLE_NEG
    all_negatives_prob: float = 0.5  # CONTROL_PROB[2]: use all (up to max_negatives) negatives
    max_tokens: int = 254  # 256 minus [CLS] and [SEP]
    separator: str = ". "
    shuffle: bool = True  # False = DATASETS.DISABLE_SHUFFLE (fixed class order, ODinW fine-tuning)


@dataclass
class DetectionPrompt:
    """A detection prompt and the character span of each class it names; `dropped` classes did not fit."""

    text: str
    spans: dict[int, Span]
    dropped: list[int]


class DetectionPromptBuilder:
    """Builds training prompts over a fixed vocabulary {class id: name} with a tokenizer to count tokens."""

    def __init__(self, class_names: Mapping[int, str], tokenizer, cfg: DetectionPromptConfig | None = None) -> None:
        self.class_names = {int(k): clean_name(str(v)) for k, v in class_names.items()}
        self.order = sorted(self.class_names)
        self.tokenizer = tokenizer
        self.cfg = cfg or DetectionPromptConfig()
        self._costs: dict[int, int] = {}

    def _cost(self, class_id: int) -> int:
        # §4.5: each class costs its name's word pieces plus the separator's.
        if class_id not in self._costs:
            self._costs[class_id] = len(self.tokenizer.tokenize(self.class_names[class_id] + self.cfg.separator))
        return self._costs[class_id]

    def _fitting(self, class_ids: Sequence[int], used: int, stop_at_first_misfit: bool) -> tuple[list[int], int]:
        """The classes, in order, that fit in the token budget after `used` tokens, and the tokens then used."""
        fitting = []
        for class_id in class_ids:
            cost = self._cost(class_id)
            if used + cost > self.cfg.max_tokens:
                if stop_at_first_misfit:
                    break
                continue
            fitting.append(class_id)
            used += cost
        return fitting, used

    def __call__(self, positive_ids: Sequence[int], rng: random.Random,
                 negative_ids: Sequence[int] = ()) -> DetectionPrompt:
        """A prompt naming `positive_ids`, `negative_ids` (known negatives, e.g. classes a teacher found absent:
        always included while they fit) and negatives sampled from the rest of the vocabulary."""
        cfg = self.cfg
        positives = sorted({int(c) for c in positive_ids})
        unknown = [c for c in positives if c not in self.class_names]
        if unknown:
            raise ValueError(f"category ids {unknown} are not in the vocabulary")
        if cfg.shuffle:
            rng.shuffle(positives)
        # check_for_positive_overflow: positives in random order while they fit; the rest are dropped (§4.5).
        kept, used = self._fitting(positives, 0, stop_at_first_misfit=True)
        dropped = [c for c in positives if c not in kept]

        required = [c for c in dict.fromkeys(int(c) for c in negative_ids) if c in self.class_names
                    and c not in positives][: cfg.max_negatives]
        candidates = [c for c in self.order if c not in positives and c not in required]
        if cfg.shuffle:
            limit = min(cfg.max_negatives - len(required), len(candidates))
            if rng.random() < cfg.all_negatives_prob or limit == 0:
                count = limit
            else:
                count = rng.randint(1, limit)
            negatives = required + rng.sample(candidates, count)
        else:
            negatives = required + candidates[: cfg.max_negatives - len(required)]
        # The negative pre-screen: only negatives that still fit in the token budget.
        screened, used = self._fitting(negatives, used, stop_at_first_misfit=False)

        ids = kept + screened
        if cfg.shuffle:
            rng.shuffle(ids)
        else:
            ids.sort()
        text, spans = build_detection_prompt([self.class_names[c] for c in ids], separator=cfg.separator,
                                             clean=False)
        return DetectionPrompt(text, dict(zip(ids, spans)), dropped)


def prompted_example(key: str, image: Image.Image, boxes: np.ndarray, class_ids: Sequence[int],
                     prompts: DetectionPromptBuilder, rng: random.Random, source: str,
                     box_events: dict[str, int], negative_ids: Sequence[int] = (),
                     token_weights: np.ndarray | None = None,
                     box_weights: np.ndarray | None = None) -> GroundingExample:
    """A detection example: GLIP's training prompt for the boxes' classes (§4.5) and the known `negative_ids`;
    boxes whose class did not fit in the prompt are left out and counted in `box_events`."""
    prompt = prompts(class_ids, rng, negative_ids)
    fits = [i for i, c in enumerate(class_ids) if c in prompt.spans]
    if len(fits) < len(class_ids):
        box_events["class did not fit in the prompt"] = len(class_ids) - len(fits)
    token_weights, box_weights = (None if w is None else w[fits] for w in (token_weights, box_weights))
    return GroundingExample(key, image, prompt.text, boxes[fits], [[prompt.spans[class_ids[i]]] for i in fits],
                            source, box_events, token_weights, box_weights)
