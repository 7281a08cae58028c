"""The batched GLIP teacher: a batch of images, each with its own prompt(s), grounded in one model pass.

What makes it fast compared with the official loop (batch 1, text padded to 256 tokens):
  * text is padded to the batch's longest prompt, not to 256 tokens: outputs on real tokens are unchanged
    (padded tokens are masked in BERT and in X-MHA, §5.2), while fusion and scoring cost scale with length;
  * several images per pass; the data loader sorts images by aspect ratio so that batches need little padding;
  * images travel as uint8 and are normalised on the device (bit-identical to `normalize_image`);
  * bf16 autocast on GPU (deformable convs and post-processing stay fp32 inside the model), TF32 allowed.

Padding images changes GLIP's outputs slightly (global pooling and attention see the padding, §1.1.7): batch
size 1 reproduces the official outputs exactly, larger batches are close but not identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from glipkit.model.config import PostprocessConfig
from glipkit.model.glip import GLIP, PromptChunk, autocast_for, rescale_boxes
from glipkit.model.prompts import Span, VocabularyChunk

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class PredictorSettings:
    """How the teacher runs: precision, text padding, TF32, post-processing (None: the model's config)."""

    precision: str = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    pad_text_to_max_length: bool = False  # True pads every prompt to 256 tokens, as the official code
    allow_tf32: bool = True
    postprocess: PostprocessConfig | None = None


@dataclass
class Grounding:
    """One image's detections in original-image pixels (xyxy), on the CPU, and its phrases beyond the token limit."""

    boxes: Tensor  # (N, 4) float32
    scores: Tensor  # (N,) float32
    labels: Tensor  # (N,) int64, index into the image's phrases (or classes)
    unmapped: list[int] = field(default_factory=list)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on CUDA, fp32 on CPU (bf16 on CPU is slower than fp32 on most CPUs)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is not supported on the CPU; use --precision bf16 or fp32")
    return precision


class Predictor:
    """Grounds prompt chunks in padded uint8 image batches with a GLIP (see the module docstring)."""

    def __init__(self, model: GLIP, settings: PredictorSettings | None = None,
                 device: torch.device | str | None = None):
        self.settings = settings or PredictorSettings()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        if model.tokenizer is None:
            raise ValueError("the GLIP has no tokenizer")
        self.precision = resolve_precision(self.settings.precision, self.device)
        if self.device.type == "cuda":  # process-wide switches; --no-tf32 turns cuDNN's default TF32 off as well
            torch.backends.cuda.matmul.allow_tf32 = self.settings.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.settings.allow_tf32
        cfg = model.config.input
        self.size_divisibility = cfg.size_divisibility
        self._mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def normalize(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
        """uint8 RGB batch (B, 3, H, W), zero padded -> GLIP's input: BGR, x255, mean/std, padding 0 (§1.1.5-6)."""
        x = images.to(self.device, non_blocking=True).float()
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
    def ground(self, images: Tensor, sizes: Sequence[tuple[int, int]], original_sizes: Sequence[tuple[int, int]],
               chunks: Sequence[PromptChunk]) -> list[Grounding]:
        """Detections of every image of the batch against its prompt chunks, boxes rescaled to original pixels.

        `images` is (B, 3, H, W) uint8 RGB zero-padded to a multiple of the size divisibility, `sizes` each image's
        resized (h, w) inside it, `original_sizes` each image's (h, w) before resizing.
        """
        pixels = self.normalize(images, sizes)
        with autocast_for(self.device, self.precision):
            detections, unmapped = self.model.ground_batch(
                pixels, list(sizes), chunks, self.settings.postprocess,
                pad_text_to_max_length=self.settings.pad_text_to_max_length,
            )
        results = []
        for det, size, original, missing in zip(detections, sizes, original_sizes, unmapped):
            boxes = rescale_boxes(det.boxes.float(), size, original)
            results.append(Grounding(boxes.cpu(), det.scores.float().cpu(), det.labels.cpu(), list(missing)))
        return results


def caption_chunks(captions: Sequence[str], spans: Sequence[Sequence[Span]]) -> list[PromptChunk]:
    """Caption mode: one text pass, each image's caption as its prompt and its phrase spans as positives."""
    return [PromptChunk(list(captions), [list(s) for s in spans], [0] * len(captions))]


def class_chunks(prompts: Sequence[VocabularyChunk], batch_size: int) -> list[PromptChunk]:
    """Classes mode: one text pass per vocabulary chunk, the same prompt for every image of the batch."""
    return [PromptChunk([p.text] * batch_size, [list(p.spans)] * batch_size, [p.offset] * batch_size)
            for p in prompts]
