"""The one predictor: batches of images grounded against prompt chunks by a GLIP, for predict, eval and pseudo-label.

What makes it fast compared with the official loop (batch 1, text padded to 256 tokens):
  * text is padded to the batch's longest prompt, not to 256 tokens: outputs on real tokens are unchanged
    (padded tokens are masked in BERT and in X-MHA, §5.2), while fusion and scoring cost scale with length;
  * several images per pass (callers sort images by aspect ratio so that batches need little padding);
  * images travel as uint8 and are normalised on the device (bit-identical to `normalize_image`);
  * the image is encoded once for all prompt chunks of a long vocabulary (§7.5);
  * bf16 autocast on GPU (deformable convs and post-processing stay fp32 inside the model), TF32 allowed.

Padding images changes GLIP's outputs slightly (global pooling and attention see the padding, §1.1.7): batch
size 1 reproduces the official outputs exactly, larger batches are close but not identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glipkit.engine.runtime import autocast, resolve_precision, set_tf32
from glipkit.model.boxes import rescale_boxes
from glipkit.model.config import PostprocessConfig, SpeedConfig
from glipkit.model.glip import GLIP, merge_detections
from glipkit.model.prompts import PhraseSpans, PromptChunk, split_phrases, vocabulary_chunks
from glipkit.model.transforms import batch_images, resize_image, to_uint8_tensor


@dataclass
class PredictorSettings:
    """How the model runs: precision, text padding, TF32, post-processing (None: the model's config)."""

    precision: str = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    pad_text_to_max_length: bool = False  # True pads every prompt to 256 tokens, as the official code
    allow_tf32: bool = True
    postprocess: PostprocessConfig | None = None
    speed: SpeedConfig | None = None  # execution levers (model/config.py); None: the model's config.speed
    pin_memory: bool = True  # CUDA: loaders hand page-locked batches, copied without blocking (same bytes)


@dataclass
class Grounding:
    """One image's detections in original-image pixels (xyxy), on the CPU, and its phrases beyond the token limit."""

    boxes: Tensor  # (N, 4) float32
    scores: Tensor  # (N,) float32
    labels: Tensor  # (N,) int64, index into the image's phrases (or classes)
    unmapped: list[int] = field(default_factory=list)


@dataclass
class Prediction:
    """Detections of one image: absolute xyxy boxes in the original image, scores, 0-based phrase indices."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.numel())


class Predictor:
    """Grounds prompt chunks in padded uint8 image batches with a GLIP (see the module docstring)."""

    def __init__(self, model: GLIP, settings: PredictorSettings | None = None,
                 device: torch.device | str | None = None):
        self.settings = settings or PredictorSettings()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        if self.settings.speed is not None:
            model.set_speed(self.settings.speed)
        if model.tokenizer is None:
            raise ValueError("the GLIP has no tokenizer: pass tokenizer= to GLIP.from_pretrained")
        self.precision = resolve_precision(self.settings.precision, self.device)
        if self.device.type == "cuda":  # --no-tf32 turns cuDNN's default TF32 off as well
            set_tf32(self.settings.allow_tf32)
        cfg = model.config.input
        self.size_divisibility = cfg.size_divisibility
        self._mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    # -- batches ----------------------------------------------------------------------------------------------

    def to_device(self, images: Tensor) -> Tensor:
        """A host batch on the model's device; page-locked batches (the pseudo-label loader's, `pin_memory`) are
        copied without blocking, so the copy overlaps the work already queued on the GPU."""
        return images.to(self.device, non_blocking=images.is_pinned())

    def normalize(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
        """uint8 RGB batch (B, 3, H, W), zero padded -> GLIP's input: BGR, x255, mean/std, padding 0 (§1.1.5-6)."""
        x = self.to_device(images).float()
        # Same float operations as transforms.normalize_image (ToTensor's /255, then 'bgr255' x255, §1.1.5), so a
        # batch of one equals the official preprocessing bit for bit.
        x = x.div(255.0).flip(1).mul(255.0)
        x = (x - self._mean) / self._std
        # §1.1.6: padding happens after normalisation, so padded pixels are 0.
        for i, (h, w) in enumerate(sizes):
            x[i, :, h:, :] = 0
            x[i, :, :h, w:] = 0
        return x

    @torch.inference_mode()
    def ground_per_chunk(self, images: Tensor, sizes: Sequence[tuple[int, int]],
                         original_sizes: Sequence[tuple[int, int]], chunks: Sequence[PromptChunk]
                         ) -> list[list[Grounding]]:
        """`result[i][c]`: image i's detections against chunk c, boxes rescaled to original pixels, with the labels
        of chunk c whose phrase fell beyond the token limit.

        `images` is (B, 3, H, W) uint8 RGB zero-padded to a multiple of the size divisibility, `sizes` each image's
        resized (h, w) inside it, `original_sizes` each image's (h, w) before resizing. The images are encoded
        once for all chunks.
        """
        pixels = self.normalize(images, sizes)
        with autocast(self.device, self.precision):
            detections, unmapped = self.model.ground_chunks(
                pixels, list(sizes), chunks, self.settings.postprocess,
                pad_text_to_max_length=self.settings.pad_text_to_max_length,
            )
        results = []
        for per_chunk, size, original, missing in zip(detections, sizes, original_sizes, unmapped):
            results.append([Grounding(rescale_boxes(det.boxes.float(), size, original).cpu(), det.scores.float().cpu(),
                                      det.labels.cpu(), labels) for det, labels in zip(per_chunk, missing)])
        return results

    def ground(self, images: Tensor, sizes: Sequence[tuple[int, int]], original_sizes: Sequence[tuple[int, int]],
               chunks: Sequence[PromptChunk]) -> list[Grounding]:
        """Detections of every image of the batch against all its prompt chunks (concatenated, no cross-chunk NMS
        as §7.5), boxes in original pixels; `unmapped` lists the labels whose phrase fell beyond the token limit."""
        results = []
        for per_chunk in self.ground_per_chunk(images, sizes, original_sizes, chunks):
            merged = merge_detections(per_chunk)
            unmapped = [label for grounding in per_chunk for label in grounding.unmapped]
            results.append(Grounding(merged.boxes, merged.scores, merged.labels, unmapped))
        return results

    # -- the Python API ----------------------------------------------------------------------------------------

    def predict(
        self,
        images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
        prompts: str | Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        phrase_spans: Sequence[Sequence[PhraseSpans]] | None = None,
        box_threshold: float = 0.0,
        batch_size: int = 1,
        chunk_size: int | None = None,
    ) -> list[Prediction]:
        """Ground phrases in images; boxes come back in original-image pixels (xyxy).

        Give either `classes` (one vocabulary for every image, GLIP's detection prompt, chunked when longer than
        the token limit) or `prompts` (one caption for all images or one per image) with `phrase_spans`
        (character spans of the phrases to ground). A prompt without spans is split at '.' into phrases.
        `batch_size` > 1 is faster but padding changes GLIP's outputs slightly (§1.1.7); 1 reproduces the
        official numbers.
        """
        single = isinstance(images, (Image.Image, np.ndarray))
        image_list = [images] if single else list(images)
        chunks_for, phrases = self._prompts(len(image_list), prompts, classes, phrase_spans, chunk_size)
        cfg = self.model.config.input
        results: list[Prediction] = []
        for start in range(0, len(image_list), max(1, batch_size)):
            pils = [Image.fromarray(i) if isinstance(i, np.ndarray) else i
                    for i in image_list[start: start + batch_size]]
            tensors = [to_uint8_tensor(resize_image(p.convert("RGB"), cfg.min_size, cfg.max_size)) for p in pils]
            pixels, sizes = batch_images(tensors, self.size_divisibility)
            originals = [(p.height, p.width) for p in pils]
            groundings = self.ground(pixels, sizes, originals, chunks_for(start, len(pils)))
            for i, grounding in enumerate(groundings):
                keep = grounding.scores >= box_threshold
                results.append(Prediction(grounding.boxes[keep], grounding.scores[keep], grounding.labels[keep],
                                          phrases[start + i]))
        return results

    def _prompts(self, count, prompts, classes, phrase_spans, chunk_size):
        """(chunks_for, phrases): chunks_for(start, n) are the prompt chunks of images start..start+n;
        phrases[i] are the texts that image i's labels index."""
        tokenizer, max_length = self.model.tokenizer, self.model.config.language.max_query_len
        if classes is not None:
            names = list(classes)
            vocabulary = vocabulary_chunks(tokenizer, names, chunk_size=chunk_size, max_length=max_length)
            return (lambda start, n: PromptChunk.for_vocabulary(vocabulary, n)), [names] * count
        if prompts is None:
            raise ValueError("predict needs `classes` or `prompts`")
        texts = [prompts] * count if isinstance(prompts, str) else list(prompts)
        if len(texts) != count:
            raise ValueError(f"{len(texts)} prompts for {count} images")
        if phrase_spans is None:
            spans = [split_phrases(t) for t in texts]
        else:
            spans = [list(s) for s in phrase_spans]
            spans = spans * count if len(spans) == 1 and count > 1 else spans
        if len(spans) != count:
            raise ValueError(f"{len(spans)} phrase span lists for {count} images")
        phrases = [[t[a:b] for a, b in sp] for t, sp in zip(texts, spans)]
        return (lambda start, n: [PromptChunk.for_captions(texts[start: start + n], spans[start: start + n])]), \
            phrases
