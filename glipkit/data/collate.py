"""Batching training examples: padded images, prompts tokenized to the batch's longest, grounding targets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from glipkit.data.augment import TransformedExample
from glipkit.model.loss import GroundingTargets
from glipkit.model.prompts import encode_prompts
from glipkit.model.transforms import batch_images


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
            [GroundingTargets(t.boxes.pin_memory(), t.positive_map.pin_memory()) for t in self.targets],
            self.keys, self.sources, self.events, self.step, self.skipped,
        )

    def to(self, device: torch.device | str) -> "TrainingBatch":
        """The same batch with its tensors on `device`."""
        return TrainingBatch(
            self.images.to(device, non_blocking=True), self.image_sizes, self.input_ids.to(device),
            self.attention_mask.to(device),
            [GroundingTargets(t.boxes.to(device), t.positive_map.to(device)) for t in self.targets],
            self.keys, self.sources, self.events, self.step, self.skipped,
        )


class GroundingCollator:
    """Examples -> TrainingBatch; text padded to the batch's longest prompt plus one padding position."""

    def __init__(self, tokenizer, max_query_len: int = 256, size_divisibility: int = 32) -> None:
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.size_divisibility = size_divisibility

    def __call__(self, examples: Sequence[TransformedExample]) -> TrainingBatch:
        if not examples:
            raise ValueError("cannot collate an empty batch")
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
            targets.append(GroundingTargets(boxes, box_map[grounded]))

        images, sizes = batch_images([e.image for e in examples], self.size_divisibility)
        return TrainingBatch(images, sizes, input_ids, attention_mask, targets, [e.key for e in examples],
                             [e.source for e in examples], dict(events))
