"""GLIP: Swin + FPN image encoder, BERT text encoder, deep-fusion head, ATSS post-processing (GLIP_SPEC.md §0)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from glipkit.model import weights as weights_io
from glipkit.model.boxes import grid_anchors
from glipkit.model.config import GLIPConfig, PostprocessConfig, preset
from glipkit.model.fpn import FPN
from glipkit.model.head import HeadOutputs, VLDyHead
from glipkit.model.hub import NAMED_MODELS, download_named_model, load_tokenizer
from glipkit.model.language import LanguageBackbone, LanguageFeatures
from glipkit.model.postprocess import Detections, postprocess_detections
from glipkit.model.prompts import Span, encode_prompts, vocabulary_chunks
from glipkit.model.swin import SwinBackbone
from glipkit.model.transforms import batch_images, normalize_image, resize_image

# §9: language_prompt_v2 keeps 1000 per-position offsets; only the first L are used.
PROMPT_TUNING_POSITIONS = 1000


@dataclass
class PromptChunk:
    """One text pass over an image batch: a prompt and its phrase spans per image, and each image's label offset."""

    prompts: list[str]
    spans: list[list[Span]]
    label_offsets: list[int]


@dataclass
class Prediction:
    """Detections of one image: absolute xyxy boxes in the original image, scores, 0-based phrase indices."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.numel())


class GLIP(nn.Module):
    """The GLIP detector. `forward` = `encode_image` + `encode_text` + `fuse_and_predict`."""

    def __init__(self, config: GLIPConfig, tokenizer=None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.backbone = SwinBackbone(config.swin)
        self.fpn = FPN(config.swin.stage_channels[1:], config.head.channels, drop_block=config.head.fpn_drop_block)
        self.language_backbone = LanguageBackbone(config.language)
        self.head = VLDyHead(config)
        self.prompt_tuning: nn.Linear | None = None

    # -- the network, split so that callers can cache image or text features -----------------------------------

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """Normalised, padded images (B, 3, H, W) -> FPN features P3..P7 (prompt-independent)."""
        return self.fpn(self.backbone(images)[1:])

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> LanguageFeatures:
        """Token ids (B, L) -> BERT features (image-independent), plus prompt-tuning offsets when enabled (§9)."""
        language = self.language_backbone(input_ids, attention_mask)
        if self.prompt_tuning is not None:
            offsets = self.prompt_tuning.weight[: input_ids.shape[1]].unsqueeze(0).to(language.hidden.dtype)
            language = LanguageFeatures(language.hidden + offsets, language.embedded + offsets, language.mask)
        return language

    def fuse_and_predict(self, features: Sequence[Tensor], language: LanguageFeatures) -> HeadOutputs:
        """Deep fusion tower and prediction head on cached image and text features."""
        return self.head(list(features), language)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> HeadOutputs:
        return self.fuse_and_predict(self.encode_image(images), self.encode_text(input_ids, attention_mask))

    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Anchors (H*W, 4) per level for feature maps of these sizes (§6.1)."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        return grid_anchors(sizes, self.config.head.anchor_strides, self.config.head.anchor_sizes, features[0].device)

    def detect(
        self,
        outputs: HeadOutputs,
        features: Sequence[Tensor],
        positive_maps: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        postprocess: PostprocessConfig | None = None,
        return_candidates: bool = False,
    ) -> list[Detections]:
        """ATSS post-processing (§7) in the network-input frame; `positive_maps[b]` is (P_b, L) for image b."""
        # Scores and boxes are computed in fp32 even when the network ran under autocast.
        return postprocess_detections(
            [t.float() for t in outputs.bbox_reg], [t.float() for t in outputs.centerness],
            [t.float() for t in outputs.dot_product_logits], self.anchors(features),
            [pm.to(outputs.dot_product_logits[0].device) for pm in positive_maps], list(image_sizes),
            postprocess or self.config.postprocess, return_candidates=return_candidates,
        )

    def enable_prompt_tuning(self) -> nn.Linear:
        """Add GLIP's `language_prompt_v2` per-position offsets, zero-initialised (§9)."""
        if self.prompt_tuning is None:
            layer = nn.Linear(self.config.language.hidden_size, PROMPT_TUNING_POSITIONS, bias=False)
            nn.init.zeros_(layer.weight)
            self.prompt_tuning = layer.to(next(self.parameters()).device)
        return self.prompt_tuning

    # -- weights --------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        tokenizer=None,
        device: str | torch.device | None = None,
        config: GLIPConfig | None = None,
        load_tokenizer_now: bool = True,
    ) -> "GLIP":
        """A GLIP from a named official model (`glip-t`, ...), an official `.pth`, or a `.safetensors` checkpoint.

        The tokenizer is a local directory or `bert-base-uncased` from the Hub (or an object).
        """
        name = str(name_or_path)
        path = download_named_model(name) if name in NAMED_MODELS else Path(name)
        state, metadata = weights_io.read_checkpoint(path)
        if weights_io.is_official_state_dict(state):
            if config is None:
                config = preset(NAMED_MODELS[name].preset) if name in NAMED_MODELS else \
                    weights_io.infer_official_config(state)
            state = weights_io.official_to_glipkit_state_dict(state, config.head.early_fusion)
        else:
            config = config or weights_io.glipkit_config_from_metadata(metadata)
            if config is None:
                raise weights_io.CheckpointError(f"{path}: neither an official GLIP checkpoint nor a glipkit one "
                                                 "(no config in its metadata)")
        # Built for real (not on the meta device): timm's non-persistent buffers, e.g. relative_position_index,
        # are not in any checkpoint and must be computed at construction.
        model = cls(config)
        if "prompt_tuning.weight" in state:
            model.enable_prompt_tuning()
        weights_io.load_state_dict_checked(model, state)
        if isinstance(tokenizer, (str, os.PathLike)) or (tokenizer is None and load_tokenizer_now):
            tokenizer = load_tokenizer(None if tokenizer is None else str(tokenizer))
        model.tokenizer = tokenizer
        model.eval()
        return model.to(device) if device is not None else model

    def save_pretrained(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write a glipkit `.safetensors` checkpoint with the config in its metadata."""
        return weights_io.save_glipkit_checkpoint(self, self.config.to_json(), path, metadata)

    # -- the Python API ---------------------------------------------------------------------------------------------

    def prepare_images(self, images: Sequence[Image.Image | np.ndarray], min_size: int | None = None
                       ) -> tuple[list[Tensor], list[tuple[int, int]]]:
        """Resize and normalise RGB images; returns the tensors and each original (h, w)."""
        tensors, original_sizes = [], []
        for image in images:
            pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
            pil = pil.convert("RGB")
            original_sizes.append((pil.height, pil.width))
            resized = resize_image(pil, min_size or self.config.input.min_size, self.config.input.max_size)
            tensors.append(normalize_image(resized, self.config.input))
        return tensors, original_sizes

    @torch.no_grad()
    def predict(
        self,
        images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
        prompts: str | Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        phrase_spans: Sequence[Sequence[Span]] | None = None,
        box_threshold: float = 0.0,
        batch_size: int = 1,
        chunk_size: int | None = None,
        precision: str = "fp32",
    ) -> list[Prediction]:
        """Ground phrases in images; boxes come back in original-image pixels (xyxy).

        Give either `classes` (one vocabulary for every image, GLIP's detection prompt, chunked when longer than
        the token limit) or `prompts` (one caption for all images or one per image) with `phrase_spans`
        (character spans of the phrases to ground). A prompt without spans is split at '.' into phrases.
        `batch_size` > 1 is faster but padding changes GLIP's outputs slightly (§1.1.7); 1 reproduces the
        official numbers. `precision` bf16/fp16 runs under autocast (deformable convs stay fp32).
        """
        if self.tokenizer is None:
            raise RuntimeError("this GLIP has no tokenizer: pass tokenizer= to GLIP.from_pretrained")
        single = isinstance(images, (Image.Image, np.ndarray))
        image_list = [images] if single else list(images)
        jobs, phrases = self._prompt_jobs(len(image_list), prompts, classes, phrase_spans, chunk_size)
        device = next(self.parameters()).device
        results: list[Prediction] = []
        for start in range(0, len(image_list), max(1, batch_size)):
            batch = image_list[start : start + batch_size]
            tensors, original_sizes = self.prepare_images(batch)
            pixels, sizes = batch_images(tensors, self.config.input.size_divisibility)
            with autocast_for(device, precision):
                detections, _ = self.ground_batch(pixels.to(device), sizes, jobs(start, len(batch)))
            for i, det in enumerate(detections):
                keep = det.scores >= box_threshold
                boxes = rescale_boxes(det.boxes[keep], sizes[i], original_sizes[i])
                results.append(Prediction(boxes.cpu(), det.scores[keep].cpu(), det.labels[keep].cpu(),
                                          phrases[start + i]))
        return results

    def ground_batch(self, pixels: Tensor, image_sizes: Sequence[tuple[int, int]], chunks: Sequence["PromptChunk"],
                     postprocess: PostprocessConfig | None = None, pad_text_to_max_length: bool = False
                     ) -> tuple[list[Detections], list[list[int]]]:
        """Detections for a padded image batch against one or more prompt chunks, the image encoded once.

        Returns per image the detections of all chunks concatenated (labels shifted by each chunk's offset; no
        cross-chunk NMS, as §7.5) in the network-input frame, and the labels whose span fell beyond the token limit.
        `pad_text_to_max_length` pads every prompt to the token limit as the official code does (§4.2); the default
        pads to the batch's longest prompt, which gives the same outputs on real tokens.
        """
        features = self.encode_image(pixels)
        per_image: list[list[Detections]] = [[] for _ in image_sizes]
        unmapped: list[list[int]] = [[] for _ in image_sizes]
        for chunk in chunks:
            encoded = encode_prompts(self.tokenizer, chunk.prompts, chunk.spans, self.config.language.max_query_len,
                                     pad_to_max_length=pad_text_to_max_length)
            language = self.encode_text(encoded.input_ids.to(pixels.device), encoded.attention_mask.to(pixels.device))
            outputs = self.fuse_and_predict(features, language)
            for i, det in enumerate(self.detect(outputs, features, encoded.positive_maps, image_sizes, postprocess)):
                offset = chunk.label_offsets[i]
                per_image[i].append(Detections(det.boxes, det.scores, det.labels + offset))
                unmapped[i].extend(j + offset for j in encoded.unmapped[i])
        merged = [Detections(torch.cat([d.boxes for d in ds]), torch.cat([d.scores for d in ds]),
                             torch.cat([d.labels for d in ds])) for ds in per_image]
        return merged, unmapped

    def _prompt_jobs(self, count, prompts, classes, phrase_spans, chunk_size):
        """(jobs, phrases): jobs(start, n) lists (prompts, spans, label offsets) per chunk for images start..start+n;
        phrases[i] are the texts that image i's labels index."""
        if classes is not None:
            names = list(classes)
            chunks = vocabulary_chunks(self.tokenizer, names, chunk_size=chunk_size,
                                       max_length=self.config.language.max_query_len)
            return (lambda start, n: [PromptChunk([c.text] * n, [list(c.spans)] * n, [c.offset] * n)
                                      for c in chunks]), [names] * count
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
        return (lambda start, n: [PromptChunk(texts[start : start + n], spans[start : start + n], [0] * n)]), phrases


def autocast_for(device: torch.device, precision: str):
    """An autocast context for `precision` (fp32: none) on `device`."""
    import contextlib

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in dtypes:
        raise ValueError(f"precision must be fp32, bf16 or fp16, not '{precision}'")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


def split_phrases(prompt: str) -> list[Span]:
    """Spans of the '.'-separated pieces of a prompt ("person. dog" -> two phrases), whitespace trimmed."""
    spans = []
    position = 0
    for piece in prompt.split("."):
        stripped = piece.strip()
        if stripped:
            start = position + piece.index(stripped)
            spans.append((start, start + len(stripped)))
        position += len(piece) + 1
    return spans


def rescale_boxes(boxes: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Boxes from the resized frame to the original image, x and y scaled separately, no +1 shift (§7.4)."""
    ratio_h = original_size[0] / input_size[0]
    ratio_w = original_size[1] / input_size[1]
    return boxes * boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
