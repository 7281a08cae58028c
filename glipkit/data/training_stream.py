"""The training batches of one rank: a deterministic function of (sources, ratios, seed, step).

Step s is mixture samples [s*G, (s+1)*G) with G = batch size x world size; rank r takes the r-th slice of B.
So N processes see exactly the samples (and augmentations) one process sees with the same global batch, and a
resumed run continues with the very next sample. DataLoader workers each build every W-th step, and the
DataLoader's round-robin over workers returns the steps in order.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import KW_ONLY, dataclass

from torch.utils.data import IterableDataset, get_worker_info

from glipkit.data.augment import TrainTransform
from glipkit.data.collate import GroundingCollator, TrainingBatch
from glipkit.data.grounding_example import BadSample
from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS, set_pil_pixel_limit
from glipkit.data.mixture import SourceMixture
from glipkit.data.source import sample_rng

MAX_SKIPPED_KEYS = 8


@dataclass(eq=False)
class TrainingBatches(IterableDataset):
    """Per-rank TrainingBatch for steps start_step, start_step+1, ... (endless when max_steps is None)."""

    mixture: SourceMixture
    transform: TrainTransform
    collator: GroundingCollator
    batch_size: int
    seed: int
    _: KW_ONLY
    rank: int = 0
    world_size: int = 1
    start_step: int = 0
    max_steps: int | None = None
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # PIL's own guard, set in each iterating process

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        set_pil_pixel_limit(self.max_image_pixels)  # PIL's own guard at the sources' limit, as pseudo-label sets it
        size = self.global_batch_size
        stream = self.mixture.stream(self.start_step * size, self.seed)
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            items = list(itertools.islice(stream, size))
            if (step - self.start_step) % workers == worker:
                yield self.build(step, items[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])
            step += 1

    def build(self, step: int, items) -> TrainingBatch:
        """Materialise, augment and collate this rank's items of one step; bad samples are skipped and counted."""
        examples, events, skipped = [], Counter(), []
        for source_index, position, item in items:
            source = self.mixture.sources[source_index]
            rng = sample_rng(self.seed, source.name, position)
            try:
                examples.append(self.transform(source.materialize(item, rng), rng))
            except BadSample as error:
                reason, key = error.reason, error.key
            except Exception as error:  # a long run never dies on one sample; the reason is counted and logged
                reason, key = f"{type(error).__name__}: {error}"[:200], f"{source.name}#{position}"
            else:
                continue
            events[f"skipped: {reason}"] += 1
            if len(skipped) < MAX_SKIPPED_KEYS:
                skipped.append((reason, f"{source.name}:{key}"))
        if not examples:
            return TrainingBatch.empty(step, dict(events), skipped)
        batch = self.collator(examples)
        for name, count in events.items():
            batch.events[name] = batch.events.get(name, 0) + count
        batch.step = step
        batch.skipped = skipped
        return batch
