"""Speed levers (model/config.py `SpeedConfig`): each computes GLIP's function within a stated tolerance on a CPU.

Measured on this CPU in fp32 (max abs diff against the levers-off path; the tests allow 4-20x more): BERT sdpa
2.4e-7 on the hidden state; X-MHA via SDPA 3.0e-7; in-head BERT via SDPA 4.8e-7; Swin windows via SDPA 1.4e-6
(features up to 3.8); channels-last, all levers together, and torch.compile (aot_eager) 4.8e-7 on the tiny model's
head outputs (up to 5.1). On the official fixture every lever keeps every intermediate within the parity test's
tolerances (1e-4; 2-5e-5 on logits of magnitude 19).
When the official ±50000 clamp could bite, the fused attention falls back to the exact path: bit-identical.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glipkit.engine.predictor import Predictor, PredictorSettings
from glipkit.engine.runtime import load_model
from glipkit.model.config import SpeedConfig, glip_tiny_test
from glipkit.model.fusion import CLAMP_VALUE, BiMultiHeadAttention, FusionBertLayer, clamp_cannot_bite
from glipkit.model.glip import GLIP
from glipkit.model.language import LanguageBackbone
from glipkit.model.swin import SwinBackbone
from test_official_parity import capture, detection_problems, intermediate_failures

ALL_BUT_COMPILE = SpeedConfig(bert_attention="sdpa", swin_sdpa=True, fusion_sdpa=True, channels_last=True)


@pytest.fixture(autouse=True)
def _seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _sdpa_calls(fn) -> tuple[object, int]:
    """fn()'s result and how many times it ran torch's scaled_dot_product_attention (seen by the profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = fn()
    return result, sum(e.count for e in prof.key_averages() if e.key == "aten::scaled_dot_product_attention")


def _padded_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    return mask


def test_bert_sdpa_matches_eager():
    language = LanguageBackbone(glip_tiny_test().language).eval()
    ids, mask = torch.randint(0, 500, (2, 24)), _padded_mask(2, 24)
    with torch.no_grad():
        eager = language(ids, mask).hidden
        language.set_attention("sdpa")
        fused, calls = _sdpa_calls(lambda: language(ids, mask).hidden)
    assert language.bert.config._attn_implementation == "sdpa" and calls == 1
    assert (fused - eager).abs().max() < 2e-6  # measured 2.4e-7
    with pytest.raises(ValueError, match="sdpa"):
        language.set_attention("flash")


def test_clamp_bound_is_an_upper_bound_of_every_score():
    query, key = torch.randn(3, 40, 16) * 30, torch.randn(3, 7, 16) * 30
    scores = torch.bmm(query, key.transpose(1, 2))
    assert clamp_cannot_bite(query, key) and scores.abs().max() < CLAMP_VALUE / 2
    assert not clamp_cannot_bite(query * 40, key * 40)  # scores up to ~1e6 would be clamped
    # Conservative: orthogonal vectors with large norms have zero scores, yet the bound refuses them.
    q, k = torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)
    q[..., 0], k[..., 1] = 1e3, 1e3
    assert not clamp_cannot_bite(q, k) and torch.bmm(q, k.transpose(1, 2)).abs().max() == 0


def _xmha(scale: float = 1.0) -> BiMultiHeadAttention:
    attn = BiMultiHeadAttention(32, 48, embed_dim=64, num_heads=4, dropout=0.0).eval()
    with torch.no_grad():
        for linear in (attn.v_proj, attn.l_proj):
            linear.weight.mul_(scale)
    return attn


def test_xmha_sdpa_matches_the_exact_path_where_the_clamp_cannot_bite():
    attn = _xmha()
    visual, lang, mask = torch.randn(2, 50, 32), torch.randn(2, 9, 48), _padded_mask(2, 9)
    with torch.no_grad():
        exact = attn(visual, lang, mask)
        attn.use_sdpa = True
        fused, calls = _sdpa_calls(lambda: attn(visual, lang, mask))
    assert calls == 2  # text->image and image->text
    for a, b in zip(exact, fused):
        assert (a - b).abs().max() < 1e-5  # measured 3.0e-7


def test_xmha_falls_back_to_the_exact_path_when_the_clamp_bites():
    attn = _xmha(scale=300.0)  # scores of order 1e5-1e6: the official clamp changes them
    visual, lang, mask = torch.randn(2, 50, 32) * 3, torch.randn(2, 9, 48) * 3, _padded_mask(2, 9)
    with torch.no_grad():
        exact = attn(visual, lang, mask)
        attn.use_sdpa = True
        lever, calls = _sdpa_calls(lambda: attn(visual, lang, mask))
        query = attn._heads(attn.v_proj(visual) * attn.scale)
        key = attn._heads(attn.l_proj(lang))
        unclamped = attn._fused(query, key, attn._heads(attn.values_v_proj(visual)),
                                attn._heads(attn.values_l_proj(lang)), mask, 2)
    assert calls == 0 and not clamp_cannot_bite(query, key)
    assert all(torch.equal(a, b) for a, b in zip(exact, lever))
    # ... and the fallback matters: without the clamp these inputs give other outputs.
    assert max((a - b).abs().max() for a, b in zip(exact, unclamped)) > 1e-3


@pytest.mark.parametrize("scale, expect_sdpa", [(1.0, True), (2000.0, False)])
def test_fusion_bert_layer_sdpa(scale, expect_sdpa):
    layer = FusionBertLayer(glip_tiny_test().language).eval()
    attention = layer.attention.self
    with torch.no_grad():
        attention.query.weight.mul_(scale)
        attention.key.weight.mul_(scale)
    hidden, mask = torch.randn(2, 12, 32), _padded_mask(2, 12)
    with torch.no_grad():
        exact = layer(hidden, mask)
        attention.use_sdpa = True
        lever, calls = _sdpa_calls(lambda: layer(hidden, mask))
    assert calls == (1 if expect_sdpa else 0)
    if expect_sdpa:
        assert (lever - exact).abs().max() < 1e-5  # measured 4.8e-7
    else:
        assert torch.equal(lever, exact)


def test_swin_window_attention_through_sdpa():
    backbone = SwinBackbone(glip_tiny_test().swin).eval()
    images = torch.randn(1, 3, 96, 160)  # 24x40 tokens: windows padded and shifted (§2.3)
    with torch.no_grad():
        exact = backbone(images)
        backbone.set_speed(fused_attention=True, channels_last=False)
        fused, calls = _sdpa_calls(lambda: backbone(images))
    assert calls == 4  # one per block
    for a, b in zip(exact, fused):
        assert (a - b).abs().max() < 1e-5 * max(1.0, a.abs().max().item())  # measured 1.4e-6


def _tiny_glip(tokenizer, speed: SpeedConfig | None = None) -> GLIP:
    torch.manual_seed(0)
    config = glip_tiny_test()
    if speed is not None:
        config.speed = speed
    return GLIP(config, tokenizer).eval()


def _forward(model: GLIP, tokenizer):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 96, 128)
    encoded = tokenizer(["a red dog. a cat", "two blue cars on the road"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(images, encoded["input_ids"], encoded["attention_mask"])
    return torch.cat([t.flatten() for t in out.dot_product_logits + out.bbox_reg + out.centerness])


def test_channels_last_and_all_levers_keep_the_tiny_model_outputs(tiny_tokenizer):
    reference = _forward(_tiny_glip(tiny_tokenizer), tiny_tokenizer)
    model = _tiny_glip(tiny_tokenizer, SpeedConfig(channels_last=True))
    assert model.fpn.output_convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.backbone.channels_last and model.head.tower[0].fusion.channels_last
    assert (_forward(model, tiny_tokenizer) - reference).abs().max() < 1e-5  # measured 4.8e-7
    model.set_speed(ALL_BUT_COMPILE)
    assert (_forward(model, tiny_tokenizer) - reference).abs().max() < 1e-5
    model.set_speed(SpeedConfig())  # and back: the default path, bit for bit
    assert torch.equal(_forward(model, tiny_tokenizer), reference)
    assert set(model.state_dict()) == set(_tiny_glip(tiny_tokenizer).state_dict())


def test_compiled_fusion_tower(tiny_tokenizer):
    """torch.compile of the head through dynamo and AOTAutograd (aot_eager; inductor's C++ build takes about a minute
    on this CPU, so code generation is left to the GPU script's compile row)."""
    reference = _forward(_tiny_glip(tiny_tokenizer), tiny_tokenizer)
    model = _tiny_glip(tiny_tokenizer, SpeedConfig(compile_fusion="aot_eager"))
    assert model.head._compiled_call_impl is not None
    assert (_forward(model, tiny_tokenizer) - reference).abs().max() < 1e-4
    assert set(model.state_dict()) == set(_tiny_glip(tiny_tokenizer).state_dict())  # no `_orig_mod.` names
    model.set_speed(SpeedConfig())
    assert model.head._compiled_call_impl is None


def test_all_levers_keep_the_official_fixture_within_parity_tolerance(glip_fixture_prefix):
    run = capture(glip_fixture_prefix, speed=ALL_BUT_COMPILE)
    failures, compared = intermediate_failures(run)
    assert compared > 0 and not failures, failures
    assert not detection_problems(run)


def test_levers_wire_through_predictor_settings_and_model_options(tiny_tokenizer, tiny_tokenizer_dir):
    model = _tiny_glip(tiny_tokenizer)
    Predictor(model, PredictorSettings(speed=dataclasses.replace(ALL_BUT_COMPILE)))
    assert model.config.speed == ALL_BUT_COMPILE
    assert model.language_backbone.bert.config._attn_implementation == "sdpa"
    assert model.backbone.swin.layers[0].blocks[0].attn.fused_attn
    assert model.head.tower[0].fusion.attn.use_sdpa and model.head.tower[0].language_layer.attention.self.use_sdpa
    Predictor(model)  # settings.speed None: the model keeps its levers
    assert model.config.speed == ALL_BUT_COMPILE
    # Pinned batches are copied without blocking; on a CPU there is nothing to pin and the copy is the tensor.
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert Predictor(model, PredictorSettings(pin_memory=False)).to_device(images) is images
    loaded = load_model("preset:glip-tiny-test", tokenizer=str(tiny_tokenizer_dir),
                        options={"speed.fusion_sdpa": "true", "speed.bert_attention": "sdpa"})
    assert loaded.config.speed.fusion_sdpa and loaded.head.tower[0].fusion.attn.use_sdpa
