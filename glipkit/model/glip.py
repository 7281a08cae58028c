"""GLIP: Swin + FPN image encoder, BERT text encoder, deep-fusion head, ATSS post-processing (GLIP_SPEC.md §0)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from glipkit.model import hub
from glipkit.model import weights as weights_io
from glipkit.model.boxes import grid_anchors
from glipkit.model.config import GLIPConfig, PostprocessConfig, SpeedConfig, preset
from glipkit.model.fpn import FPN
from glipkit.model.head import HeadOutputs, VLDyHead
from glipkit.model.language import LanguageBackbone, LanguageFeatures
from glipkit.model.postprocess import Detections, postprocess_detections
from glipkit.model.prompts import PromptChunk, encode_prompts
from glipkit.model.swin import SwinBackbone

# §9: language_prompt_v2 keeps 1000 per-position offsets; only the first L are used.
PROMPT_TUNING_POSITIONS = 1000


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
        self._compiled_with: str | None = None
        self.set_speed(config.speed)

    def set_speed(self, speed: SpeedConfig) -> None:
        """Switch the execution levers (config.py `SpeedConfig`); parameters and state-dict names stay."""
        self.config.speed = speed
        self.language_backbone.set_attention(speed.bert_attention)
        self.backbone.set_speed(speed.swin_sdpa, speed.channels_last)
        layout = torch.channels_last if speed.channels_last else torch.contiguous_format
        self.fpn.to(memory_format=layout)
        self.head.to(memory_format=layout)
        for layer in self.head.tower:
            layer.set_speed(speed)
        # The fusion tower and the prediction layers as one compiled graph (one cache entry per input shape, not
        # one per tower layer); nn.Module.compile keeps the parameter names (no `_orig_mod.` in state dicts).
        if speed.compile_fusion != self._compiled_with:
            self.head._compiled_call_impl = None
            if speed.compile_fusion:
                self.head.compile(backend=speed.compile_fusion)
            self._compiled_with = speed.compile_fusion

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

        The tokenizer is a local directory or `bert-base-uncased` from the Hub (or an object). It is resolved
        first: a missing tokenizer is reported before gigabytes of weights are fetched or read.
        """
        name = str(name_or_path)
        if isinstance(tokenizer, (str, os.PathLike)) or (tokenizer is None and load_tokenizer_now):
            try:
                tokenizer = hub.load_tokenizer(None if tokenizer is None else str(tokenizer))
            except hub.WeightsUnavailableError as error:
                raise hub.WeightsUnavailableError(f"{error}{hub.missing_weights_note(name)}") from None
        if config is None and name in hub.NAMED_MODELS:
            config = preset(hub.NAMED_MODELS[name].preset)
        if config is not None:  # before a download, when the config is known without the file
            _check_tokenizer(tokenizer, config, name)
        path = hub.resolve_model_file(name)
        state, metadata = weights_io.read_checkpoint(path)
        try:
            model = cls._from_state_dict(state, metadata, config, lambda c: _check_tokenizer(tokenizer, c, name))
        except weights_io.CheckpointError as error:
            raise weights_io.CheckpointError(f"{path}: {error}") from None
        model.tokenizer = tokenizer
        model.eval()
        return model.to(device) if device is not None else model

    @classmethod
    def _from_state_dict(cls, state: dict[str, Tensor], metadata: dict[str, str], config: GLIPConfig | None,
                         check_config) -> "GLIP":
        official = weights_io.is_official_state_dict(state)
        if official:
            config = config or weights_io.infer_official_config(state)
            weights = weights_io.official_to_glipkit_state_dict(state, config.head.early_fusion)
        else:
            weights = state
            config = config or weights_io.glipkit_config_from_metadata(metadata)
            if config is None:
                raise weights_io.CheckpointError("neither an official GLIP checkpoint nor a glipkit one (no config "
                                                 "in its metadata)")
        check_config(config)
        # Parameters on the meta device (the checkpoint fills them, no random init); buffers that no checkpoint
        # holds, e.g. timm's relative_position_index, are computed for real at construction.
        with weights_io.parameters_on_meta():
            try:
                model = cls(config)
            except (ValueError, RuntimeError) as error:  # a config inferred from odd shapes
                raise weights_io.CheckpointError(f"its key shapes describe no GLIP that can be built ({error})")
            if "prompt_tuning.weight" in weights:
                model.enable_prompt_tuning()
        weights_io.materialize_parameters(model, weights)
        if official:
            weights_io.check_recomputed_buffers(model, state)
        namer = weights_io.official_key_namer(config.head.early_fusion) if official else None
        weights_io.load_state_dict_checked(model, weights, namer)
        return model

    def save_pretrained(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write a glipkit `.safetensors` checkpoint with the config in its metadata."""
        return weights_io.save_glipkit_checkpoint(self, self.config.to_json(), path, metadata)

    # -- grounding: one image encoding, one text pass per prompt chunk ----------------------------------------

    def ground_chunks(self, pixels: Tensor, image_sizes: Sequence[tuple[int, int]], chunks: Sequence[PromptChunk],
                      postprocess: PostprocessConfig | None = None, pad_text_to_max_length: bool = False
                      ) -> tuple[list[list[Detections]], list[list[list[int]]]]:
        """Detections of a padded image batch against each prompt chunk, the images encoded once for all chunks.

        Returns `detections[i][c]` for image i and chunk c in the network-input frame, labels shifted by the chunk's
        offset, and `unmapped[i][c]`, the (shifted) labels whose phrase fell beyond the token limit.
        `pad_text_to_max_length` pads every prompt to the token limit as the official code does (§4.2); the default
        pads to the batch's longest prompt, which gives the same outputs on real tokens.
        """
        features = self.encode_image(pixels)
        per_image: list[list[Detections]] = [[] for _ in image_sizes]
        unmapped: list[list[list[int]]] = [[] for _ in image_sizes]
        for chunk in chunks:
            encoded = encode_prompts(self.tokenizer, chunk.prompts, chunk.spans, self.config.language.max_query_len,
                                     pad_to_max_length=pad_text_to_max_length)
            language = self.encode_text(encoded.input_ids.to(pixels.device), encoded.attention_mask.to(pixels.device))
            outputs = self.fuse_and_predict(features, language)
            for i, det in enumerate(self.detect(outputs, features, encoded.positive_maps, image_sizes, postprocess)):
                offset = chunk.label_offsets[i]
                per_image[i].append(Detections(det.boxes, det.scores, det.labels + offset))
                unmapped[i].append([j + offset for j in encoded.unmapped[i]])
        return per_image, unmapped

    def ground_batch(self, pixels: Tensor, image_sizes: Sequence[tuple[int, int]], chunks: Sequence[PromptChunk],
                     postprocess: PostprocessConfig | None = None, pad_text_to_max_length: bool = False
                     ) -> tuple[list[Detections], list[list[int]]]:
        """`ground_chunks` with each image's detections of all chunks concatenated (no cross-chunk NMS, §7.5)."""
        per_image, unmapped = self.ground_chunks(pixels, image_sizes, chunks, postprocess, pad_text_to_max_length)
        return [merge_detections(ds) for ds in per_image], [sum(u, []) for u in unmapped]


def _check_tokenizer(tokenizer, config: GLIPConfig, name: str) -> None:
    if tokenizer is not None:
        hub.check_vocabulary(tokenizer, config.language.vocab_size, f"model '{name}'",
                             "use the tokenizer the model was trained with (--tokenizer DIR)")


def merge_detections(detections: Sequence[Detections]) -> Detections:
    """One image's detections of several prompt chunks, concatenated."""
    return Detections(torch.cat([d.boxes for d in detections]), torch.cat([d.scores for d in detections]),
                      torch.cat([d.labels for d in detections]))
