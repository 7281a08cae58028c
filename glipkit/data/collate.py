"""Batching training examples: padded images, prompts tokenized to the batch's longest, grounding targets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Sequence

import torch
from torch import Tensor

from glipkit.data.augment import TransformedExample
from glipkit.model.loss import GroundingTargets
from glipkit.model.prompts import encode_prompts
from glipkit.model.transforms import batch_images


def _map_targets(target: GroundingTargets, fn: Callable[[Tensor], Tensor]) -> GroundingTargets:
    """`target` with `fn` applied to each of its tensors."""
    return replace(target, **{name: fn(value) for name, value in vars(target).items() if value is not None})


@dataclass
class TrainingBatch:
    """A padded image batch, its tokenized prompts, one GroundingTargets per image (boxes in the resized frame,
    binary positive maps over the L token positions, §4.4), and counts of what was skipped or changed."""

    images: Tensor
    image_sizes: list[tuple[int, int]]
    input_ids: Tensor
    attention_mask: Tensor
    targets: list[GroundingTargets]
    keys: list[str]
    sources: list[str]
    events: dict[str, int] = field(default_factory=dict)
    step: int = -1
    # (reason, key) of a few samples skipped in this batch, for the run's skipped-samples log.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def empty(cls, step: int, events: dict[str, int], skipped: list[tuple[str, str]]) -> "TrainingBatch":
        """A batch in which every sample was skipped."""
        return cls(torch.zeros(0, 3, 32, 32), [], torch.zeros(0, 2, dtype=torch.long),
                   torch.zeros(0, 2, dtype=torch.long), [], [], [], dict(events), step, list(skipped))

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> "TrainingBatch":
        """Page-locked copies of the tensors (DataLoader pin_memory=True calls this)."""
        return TrainingBatch(
            self.images.pin_memory(), self.image_sizes, self.input_ids.pin_memory(), self.attention_mask.pin_memory(),
            [_map_targets(t, Tensor.pin_memory) for t in self.targets],
            self.keys, self.sources, self.events, self.step, self.skipped,
        )

    def to(self, device: torch.device | str) -> "TrainingBatch":
        """The same batch with its tensors on `device`."""
        return TrainingBatch(
            self.images.to(device, non_blocking=True), self.image_sizes, self.input_ids.to(device),
            self.attention_mask.to(device),
            [_map_targets(t, lambda x: x.to(device)) for t in self.targets],
            self.keys, self.sources, self.events, self.step, self.skipped,
        )


class GroundingCollator:
    """Examples -> TrainingBatch; text padded to the batch's longest prompt plus one padding position.

    `pack_sources`: negative caption packing (GLIP appendix C.1): the prompt of an example from one of these
    sources gets the other such captions of the batch appended (". "-separated, while they fit in the token
    limit) as negatives: their tokens are in the text with no box.
    """

    def __init__(self, tokenizer, max_query_len: int = 256, size_divisibility: int = 32,
                 pack_sources: Collection[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.size_divisibility = size_divisibility
        self.pack_sources = frozenset(pack_sources)

    def pack_negative_captions(self, examples: Sequence[TransformedExample]) -> list[TransformedExample]:
        """The examples with other captions of the batch packed into their prompts as negatives (spans unchanged:
        the negatives go after the example's own caption)."""
        captions = [e.prompt.strip() for e in examples if e.source in self.pack_sources]
        budget = self.max_query_len - 2  # [CLS] and [SEP]
        packed = []
        for example in examples:
            if example.source not in self.pack_sources:
                packed.append(example)
                continue
            prompt, used = example.prompt, len(self.tokenizer.tokenize(example.prompt))
            for caption in captions:
                if caption == example.prompt.strip():
                    continue
                cost = len(self.tokenizer.tokenize(". " + caption))
                if used + cost <= budget:
                    prompt, used = prompt.rstrip() + ". " + caption, used + cost
            packed.append(replace(example, prompt=prompt))
        return packed

    def __call__(self, examples: Sequence[TransformedExample]) -> TrainingBatch:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        if self.pack_sources:
            examples = self.pack_negative_captions(examples)
        events: Counter = Counter()
        flat_spans, owners = [], []
        for example in examples:
            spans, owner = [], []
            for g, box_spans in enumerate(example.box_spans):
                spans.extend(box_spans)
                owner.extend([g] * len(box_spans))
            flat_spans.append(spans)
            owners.append(owner)
            events.update(example.box_events)
        encoded = encode_prompts(self.tokenizer, [e.prompt for e in examples], flat_spans, self.max_query_len)
        input_ids, attention_mask = encoded.input_ids, encoded.attention_mask
        if input_ids.shape[1] < self.max_query_len:
            # §8.1: negatives' target sits on the last position (the [NoObj] slot), which the loss keeps only
            # when its attention mask is 1. With 256-token padding that slot is padding unless a prompt fills
            # all 256 tokens; one extra padding position keeps it so when padding to the batch's longest.
            pad = torch.full((input_ids.shape[0], 1), self.tokenizer.pad_token_id or 0, dtype=input_ids.dtype)
            input_ids = torch.cat([input_ids, pad], dim=1)
            attention_mask = torch.cat([attention_mask, torch.zeros_like(pad)], dim=1)
        length = input_ids.shape[1]

        targets = []
        for example, span_map, owner in zip(examples, encoded.positive_maps, owners):
            box_map = torch.zeros(len(example.box_spans), length)
            for row, g in enumerate(owner):
                box_map[g, : span_map.shape[1]] = torch.maximum(box_map[g, : span_map.shape[1]], span_map[row])
            grounded = box_map.sum(dim=1) > 0
            if (~grounded).any():
                events["phrase beyond the token limit"] += int((~grounded).sum())
            boxes = torch.as_tensor(example.boxes, dtype=torch.float32).reshape(-1, 4)[grounded]
            weights = [None if w is None else torch.as_tensor(w, dtype=torch.float32)[grounded]
                       for w in (example.token_weights, example.box_weights)]
            targets.append(GroundingTargets(boxes, box_map[grounded], *weights))

        images, sizes = batch_images([e.image for e in examples], self.size_divisibility)
        return TrainingBatch(images, sizes, input_ids, attention_mask, targets, [e.key for e in examples],
                             [e.source for e in examples], dict(events))
