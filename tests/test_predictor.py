"""The batched teacher engine: exact batch-1 parity with GLIP.predict, batching and text padding that do not change
outputs on real tokens, on-device normalisation, filters and the candidate-threshold shortcut."""

from __future__ import annotations

import random

import pytest
import torch

from glipkit.demo.samples import make_layout
from glipkit.engine.labelling.filters import BELOW_IMAGE_THRESHOLD, TOO_FEW_BOXES, apply_filters, filter_settings, \
    postprocess_for
from glipkit.engine.predictor import Predictor, PredictorSettings
from glipkit.model.prompts import PromptChunk, vocabulary_chunks
from glipkit.model.config import InputConfig, PostprocessConfig
from glipkit.model.transforms import batch_images, normalize_image, resize_image
from pseudo_label_helpers import tiny_teacher


@pytest.fixture(scope="module")
def teacher(tiny_tokenizer):
    return tiny_teacher(tiny_tokenizer)


def _uint8(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _samples(count: int, width: int, height: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        sample = make_layout(rng, f"{i:04d}", min_size=min(width, height), max_size=max(width, height))
        sample.width, sample.height = width, height  # same size for all (layout fits inside)
        out.append(sample)
    return out


def _inputs(teacher, samples):
    cfg = teacher.config.input
    resized = [resize_image(s.render(), cfg.min_size, cfg.max_size) for s in samples]
    images, sizes = batch_images([_uint8(r) for r in resized], cfg.size_divisibility)
    originals = [(s.height, s.width) for s in samples]
    spans = [sorted({o.span for o in s.objects}) for s in samples]
    return images, sizes, originals, [s.caption for s in samples], spans


def test_batch_of_one_reproduces_glip_predict_exactly(teacher):
    predictor = Predictor(teacher, PredictorSettings(precision="fp32"))
    for sample in _samples(2, 211, 157, seed=1) + _samples(1, 150, 260, seed=2):
        images, sizes, originals, captions, spans = _inputs(teacher, [sample])
        ours = predictor.ground(images, sizes, originals, [PromptChunk.for_captions(captions, spans)])[0]
        reference = predictor.predict(sample.render(), prompts=captions[0], phrase_spans=spans, batch_size=1)[0]
        assert len(reference) > 0
        assert torch.equal(ours.boxes, reference.boxes)
        assert torch.equal(ours.scores, reference.scores)
        assert torch.equal(ours.labels, reference.labels)


def test_on_device_normalisation_is_bit_identical_and_padding_is_zero(teacher):
    predictor = Predictor(teacher)
    cfg = teacher.config.input
    pictures = [s.render() for s in _samples(1, 200, 150) + _samples(1, 140, 230, seed=3)]
    resized = [resize_image(p, cfg.min_size, cfg.max_size) for p in pictures]
    images, sizes = batch_images([_uint8(r) for r in resized], 32)
    pixels = predictor.normalize(images, sizes)
    reference, _ = batch_images([normalize_image(r, cfg) for r in resized], 32)
    assert torch.equal(pixels, reference)
    (h, w) = sizes[0]
    assert pixels[0, :, h:, :].abs().sum() == 0 and pixels[0, :, :, w:].abs().sum() == 0


def test_batched_equals_per_image_when_images_share_the_padded_size(teacher):
    predictor = Predictor(teacher, PredictorSettings(precision="fp32"))
    samples = _samples(3, 192, 144, seed=5)
    images, sizes, originals, captions, spans = _inputs(teacher, samples)
    assert len(set(map(len, captions))) > 1  # prompts of different lengths: text padding differs in the batch
    batched = predictor.ground(images, sizes, originals, [PromptChunk.for_captions(captions, spans)])
    for i in range(len(samples)):
        alone = predictor.ground(images[i : i + 1], sizes[i : i + 1], originals[i : i + 1],
                                 [PromptChunk.for_captions(captions[i : i + 1], spans[i : i + 1])])[0]
        assert alone.scores.numel() > 0
        assert torch.equal(batched[i].labels, alone.labels)
        assert torch.allclose(batched[i].scores, alone.scores, atol=1e-5)
        assert torch.allclose(batched[i].boxes, alone.boxes, atol=1e-3)


def test_text_padded_to_longest_equals_text_padded_to_256(teacher):
    samples = _samples(3, 176, 176, seed=7)
    images, sizes, originals, captions, spans = _inputs(teacher, samples)
    chunks = [PromptChunk.for_captions(captions, spans)]
    longest = Predictor(teacher, PredictorSettings(precision="fp32")).ground(images, sizes, originals, chunks)
    full = Predictor(teacher, PredictorSettings(precision="fp32", pad_text_to_max_length=True)).ground(
        images, sizes, originals, chunks)
    for a, b in zip(longest, full):
        assert a.scores.numel() > 0
        assert torch.equal(a.labels, b.labels)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
        assert torch.allclose(a.boxes, b.boxes, atol=1e-3)


def test_bf16_autocast_stays_close_to_fp32(teacher):
    samples = _samples(2, 160, 160, seed=9)
    images, sizes, originals, captions, spans = _inputs(teacher, samples)
    chunks = [PromptChunk.for_captions(captions, spans)]
    fp32 = Predictor(teacher, PredictorSettings(precision="fp32")).ground(images, sizes, originals, chunks)
    bf16 = Predictor(teacher, PredictorSettings(precision="bf16")).ground(images, sizes, originals, chunks)
    for a, b in zip(fp32, bf16):
        assert b.scores.dtype == torch.float32 and b.boxes.dtype == torch.float32
        assert abs(a.scores.max().item() - b.scores.max().item()) < 0.02


def test_candidate_threshold_shortcut_keeps_exactly_the_boxes_over_the_box_threshold(teacher):
    samples = _samples(3, 200, 168, seed=11)
    images, sizes, originals, captions, spans = _inputs(teacher, samples)
    chunks = [PromptChunk.for_captions(captions, spans)]
    base = PostprocessConfig()
    everything = Predictor(teacher, PredictorSettings(precision="fp32", postprocess=base)).ground(
        images, sizes, originals, chunks)
    threshold = float(torch.cat([g.scores for g in everything]).median())  # a threshold that cuts boxes
    filters = filter_settings("none", box_threshold=threshold)
    shortcut = postprocess_for(filters, base)
    assert shortcut.score_threshold > base.score_threshold
    pruned = Predictor(teacher, PredictorSettings(precision="fp32", postprocess=shortcut)).ground(
        images, sizes, originals, chunks)
    for full, fast in zip(everything, pruned):
        keep_full, _ = apply_filters(full.scores, filters)
        keep_fast, _ = apply_filters(fast.scores, filters)
        assert keep_full.numel() > 0
        assert torch.equal(full.scores[keep_full], fast.scores[keep_fast])
        assert torch.equal(full.boxes[keep_full], fast.boxes[keep_fast])


def test_filter_presets_and_knobs():
    scores = torch.tensor([0.9, 0.2, 0.55, 0.35, 0.12, 0.05])
    keep, flags = apply_filters(scores, filter_settings("glip"))
    assert keep.tolist() == [0, 2] and flags == []
    keep, flags = apply_filters(scores, filter_settings("mm-gdino"))
    assert keep.tolist() == [0, 2, 3]
    keep, flags = apply_filters(scores, filter_settings("owl-st"))
    assert keep.tolist() == [0, 2, 3, 1, 4] and flags == []
    keep, flags = apply_filters(torch.tensor([0.25, 0.2, 0.05]), filter_settings("owl-st"))
    assert keep.numel() == 0 and flags == [BELOW_IMAGE_THRESHOLD]
    keep, flags = apply_filters(scores, filter_settings("none", max_boxes=2))
    assert keep.tolist() == [0, 2]
    keep, flags = apply_filters(scores, filter_settings("glip", min_boxes=3))
    assert keep.numel() == 0 and flags == [TOO_FEW_BOXES]
    assert filter_settings("owl-st", image_threshold=0.5).box_threshold == 0.1
    with pytest.raises(ValueError):
        filter_settings("yolo")
    post = postprocess_for(filter_settings("glip", nms=0.5, max_boxes=20), PostprocessConfig())
    assert (post.nms_threshold, post.detections_per_image) == (0.5, 20)
    assert post.score_threshold == pytest.approx(0.25 * 0.999)


def test_vocabulary_chunks_split_long_vocabularies(tiny_tokenizer):
    names = ["person", "dog", "cat", "traffic light", "car"]
    whole = vocabulary_chunks(tiny_tokenizer, names)
    assert len(whole) == 1 and whole[0].text == "person. dog. cat. traffic light. car"
    chunked = vocabulary_chunks(tiny_tokenizer, names, chunk_size=2)
    assert [p.offset for p in chunked] == [0, 2, 4]
    assert [p.text for p in chunked] == ["person. dog", "cat. traffic light", "car"]
    many = [f"red car {i}" for i in range(120)]  # ~600 tokens: must be chunked (40 per chunk, §7.5)
    auto = vocabulary_chunks(tiny_tokenizer, many)
    assert [p.offset for p in auto] == [0, 40, 80]
    with pytest.raises(ValueError, match="does not fit"):
        vocabulary_chunks(tiny_tokenizer, many, chunk_size=120)
    assert InputConfig().min_size == 800  # the engine's default resize is GLIP's
