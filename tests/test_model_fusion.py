"""The deep-fusion tower and VLDyHead against the official GLIP fixture (GLIP_SPEC.md §5-§6, §11.3)."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import glipkit.model.fusion as fusion
from glipkit.model.config import GLIPConfig, LanguageConfig, from_official_config, glip_l, glip_t, glip_t_a, \
    glip_tiny_test
from glipkit.model.fusion import BiAttentionBlock, DyConv, FusionBertLayer, ModulatedDeformConv3x3, \
    offsets_for_output
from glipkit.model.head import VLDyHead
from glipkit.model.language import LanguageFeatures
from glipkit.model.weights import is_dropped_official_key, official_to_glipkit_key

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
LEVELS = ("p3", "p4", "p5", "p6", "p7")
ABS_TOL = 1e-4
REL_TOL = 1e-4


def _io_path(prefix: Path) -> Path:
    return Path(f"{prefix}_io.safetensors")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the parity test over every tower/head tensor the fixture file holds."""
    if "tensor_name" in metafunc.fixturenames:
        prefix = Path(metafunc.config.getoption("--glip-fixture"))
        with safe_open(str(_io_path(prefix)), "pt") as f:
            names = sorted(n for n in f.keys() if n.startswith(("out.dyhead.", "out.head.")))
        metafunc.parametrize("tensor_name", names)


def _load_head(prefix: Path) -> tuple[GLIPConfig, VLDyHead]:
    cfg = from_official_config(json.loads(Path(f"{prefix}_config.json").read_text()))
    state = {official_to_glipkit_key(k, cfg.head.early_fusion): v
             for k, v in load_file(f"{prefix}.safetensors").items() if not is_dropped_official_key(k)}
    head = VLDyHead(cfg).eval()
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}, strict=True)
    return cfg, head


def _fixture_inputs(io: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], LanguageFeatures]:
    features = [io[f"out.fpn.{lv}"] for lv in LEVELS]
    language = LanguageFeatures(hidden=io["out.lang.hidden"], embedded=io["out.lang.embedded"],
                                mask=io["input.attention_mask"])
    return features, language


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != fixture {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.abs().max().item()
    tol = max(ABS_TOL, REL_TOL * scale)
    assert err <= tol, f"{name}: max abs error {err:.3e} > tolerance {tol:.1e} (max |ref| {scale:.3g})"
    return err


@pytest.fixture(scope="module")
def fixture_io(glip_fixture_prefix: Path) -> dict[str, torch.Tensor]:
    return load_file(str(_io_path(glip_fixture_prefix)))


@pytest.fixture(scope="module")
def fixture_head(glip_fixture_prefix: Path) -> tuple[GLIPConfig, VLDyHead]:
    return _load_head(glip_fixture_prefix)


@pytest.fixture(scope="module")
def head_run(fixture_head, fixture_io) -> dict[str, torch.Tensor]:
    """Every tower intermediate and head output of one forward pass, under the fixture's tensor names."""
    _, head = fixture_head
    captured: dict[str, torch.Tensor] = {}
    hooks = []

    def save_visual(prefix: str, levels: list[torch.Tensor]) -> None:
        for lv, x in zip(LEVELS, levels):
            captured[f"{prefix}.{lv}"] = x

    for i, layer in enumerate(head.tower):
        base = f"out.dyhead.layer{i}"
        if layer.fusion is not None:
            def on_fusion(module, args, out, base=base):
                save_visual(f"{base}.fusion.visual", out[0])
                captured[f"{base}.fusion.lang"] = out[1]
            hooks.append(layer.fusion.register_forward_hook(on_fusion))
        if layer.language_layer is not None:
            hooks.append(layer.language_layer.register_forward_hook(
                lambda m, a, out, base=base: captured.__setitem__(f"{base}.bert.lang", out)))
        hooks.append(layer.dyconv.register_forward_hook(
            lambda m, a, out, base=base: save_visual(f"{base}.dyconv.visual", out)))
    hooks.append(head.token_projection.register_forward_hook(
        lambda m, args, out: captured.__setitem__("out.head.proj_tokens_input", args[0])))

    features, language = _fixture_inputs(fixture_io)
    with torch.no_grad():
        out = head(features, language, compute_cls_logits=True)
    for h in hooks:
        h.remove()
    for name, values in (("bbox_reg", out.bbox_reg), ("centerness", out.centerness),
                         ("dot_product_logits", out.dot_product_logits), ("cls_logits", out.cls_logits)):
        save_visual(f"out.head.{name}", values)
    captured["out.head.proj_tokens"] = out.proj_tokens
    captured["out.head.proj_tokens_bias"] = out.proj_tokens_bias
    # The head's prediction convs read the last tower layer's output.
    last = len(head.tower) - 1
    for lv, x in zip(LEVELS, out.tower_features):
        assert torch.equal(x, captured[f"out.dyhead.layer{last}.dyconv.visual.{lv}"])
    return captured


def test_fixture_parity(tensor_name: str, head_run, fixture_io) -> None:
    """Each tower intermediate and head output matches the official code's within 1e-4 (abs or rel to max)."""
    assert tensor_name in head_run, f"{tensor_name}: no glipkit tensor captured for this fixture name"
    _assert_close(tensor_name, head_run[tensor_name], fixture_io[tensor_name])


def test_offset_reinterpretation_is_memory_order() -> None:
    """§5.4: the coarser level's conv reads the first C*Ho*Wo values of each sample's offsets."""
    offset = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    out = offsets_for_output(offset, (2, 3))
    assert out.shape == (2, 3, 2, 3)
    assert torch.equal(out[1].flatten(), offset[1].flatten()[:18])
    assert not torch.equal(out, offset[..., :2, :3])  # not a crop
    assert offsets_for_output(offset, (4, 6)) is offset
    with pytest.raises(ValueError):
        offsets_for_output(offset, (5, 6))


@pytest.mark.parametrize("variant", ["crop", "resize"])
def test_offset_reinterpretation_matters(variant: str, fixture_head, fixture_io, monkeypatch) -> None:
    """Per-level cropped or resized offsets for the coarser level visibly change DyConv's output (§5.4)."""
    _, head = fixture_head
    inputs = [fixture_io[f"out.dyhead.layer0.fusion.visual.{lv}"] for lv in LEVELS]
    expected = [fixture_io[f"out.dyhead.layer0.dyconv.visual.{lv}"] for lv in LEVELS]
    with torch.no_grad():
        for lv, x, ref in zip(LEVELS, head.tower[0].dyconv(inputs), expected):
            _assert_close(f"layer0.dyconv.{lv}", x, ref)

    def crop(offset, size):
        return offset[..., : size[0], : size[1]]

    def resize(offset, size):
        return F.interpolate(offset, size=tuple(size), mode="bilinear", align_corners=False)

    monkeypatch.setattr(fusion, "offsets_for_output", crop if variant == "crop" else resize)
    with torch.no_grad():
        wrong = head.tower[0].dyconv(inputs)
    errors = [(w - ref).abs().max().item() for w, ref in zip(wrong, expected)]
    # P3..P6 take a coarser-level source, P7 does not.
    assert min(errors[:4]) > 0.1, errors
    assert errors[4] <= ABS_TOL


def test_text_padding_does_not_change_real_tokens(fixture_head, fixture_io) -> None:
    """Text padded to the longest prompt instead of 256 gives the same outputs on real tokens."""
    _, head = fixture_head
    features, language = _fixture_inputs(fixture_io)
    length = int(language.mask.sum(dim=1).max())
    short = LanguageFeatures(hidden=language.hidden[:, :length], embedded=language.embedded[:, :length],
                             mask=language.mask[:, :length])
    with torch.no_grad():
        out = head(features, short)
    real = language.mask[:, :length].bool()
    for lv, logits in zip(LEVELS, out.dot_product_logits):
        ref = fixture_io[f"out.head.dot_product_logits.{lv}"][:, :, :length]
        err = (logits - ref).abs().amax(dim=1)[real].max().item()
        assert err <= ABS_TOL, f"{lv}: real-token logits moved by {err:.2e} with shorter padding"
    for lv, x in zip(LEVELS, out.bbox_reg):
        _assert_close(f"bbox_reg.{lv} (short text)", x, fixture_io[f"out.head.bbox_reg.{lv}"])


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_full_size() -> None:
    """§11.3 per-module formulas at GLIP-T sizes, and the whole head of GLIP-T, GLIP-T(A), GLIP-L (§11)."""
    with torch.device("meta"):
        assert _num_params(BiAttentionBlock(256, 768, 2048, 8)) == 6_303_744
        assert _num_params(FusionBertLayer(LanguageConfig())) == 7_087_872
        assert _num_params(DyConv(256, 16)) == 1_917_276
        for cfg, tower in ((glip_t(), 91_853_352), (glip_t_a(), 11_503_656), (glip_l(), 122_471_136)):
            head = VLDyHead(cfg)
            assert _num_params(head.tower) == tower
            assert _num_params(head) - tower == 219_484


@pytest.mark.parametrize("name,make_cfg", [("glip_t", glip_t), ("glip_l", glip_l)])
def test_head_keys_match_official_key_list(name: str, make_cfg) -> None:
    """Every official `rpn.head.*` key maps onto a VLDyHead parameter of the same shape, and nothing is left."""
    official = {}
    for line in (FIXTURES / f"{name}_state_dict_keys.tsv").read_text().splitlines():
        key, shape = line.split("\t")[:2]
        if key.startswith("rpn.head.") and not is_dropped_official_key(key):
            official[official_to_glipkit_key(key)] = tuple(ast.literal_eval(shape))
    with torch.device("meta"):
        head = VLDyHead(make_cfg())
    ours = {f"head.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
    assert set(ours) == set(official), (sorted(set(ours) - set(official))[:5], sorted(set(official) - set(ours))[:5])
    mismatched = [k for k in ours if ours[k] != official[k]]
    assert not mismatched, [(k, ours[k], official[k]) for k in mismatched[:5]]


def _tiny_cfg(**head_changes) -> GLIPConfig:
    cfg = glip_tiny_test()
    cfg.head = dataclasses.replace(cfg.head, **{"channels": 32, "num_layers": 2, **head_changes})
    return cfg


def _random_inputs(cfg: GLIPConfig, batch: int = 2, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    features = [torch.randn(batch, cfg.head.channels, h, w, generator=g) for h, w in sizes]
    hidden = torch.randn(batch, length, cfg.language.hidden_size, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[0, :7] = 1
    mask[1, :10] = 1
    return features, LanguageFeatures(hidden=hidden, embedded=hidden * mask[..., None], mask=mask)


def test_glip_t_a_has_no_fusion_and_reads_embedded() -> None:
    """GLIP-T(A): DyConv-only tower; the alignment head reads BERT's masked output, not `hidden` (§5.5)."""
    with torch.device("meta"):
        head = VLDyHead(glip_t_a())
    assert len(head.tower) == 6
    assert all(layer.fusion is None and layer.language_layer is None for layer in head.tower)

    torch.manual_seed(0)
    cfg = _tiny_cfg(early_fusion=False, use_fused_language=False)
    head = VLDyHead(cfg).eval()
    features, language = _random_inputs(cfg)
    with torch.no_grad():
        base = head(features, language)
        other_hidden = head(features, dataclasses.replace(language, hidden=torch.randn_like(language.hidden)))
        other_embedded = head(features, dataclasses.replace(language, embedded=language.embedded * 2 + 1))
    for a, b in zip(base.dot_product_logits, other_hidden.dot_product_logits):
        assert torch.equal(a, b)
    assert (base.dot_product_logits[0] - other_embedded.dot_product_logits[0]).abs().max() > 1e-3


def test_last_layer_has_no_bert_without_fused_language() -> None:
    """§5.1: with early fusion but unfused alignment features, the last layer's BERT layer is absent."""
    with torch.device("meta"):
        head = VLDyHead(_tiny_cfg(use_fused_language=False))
    assert head.tower[0].language_layer is not None and head.tower[1].language_layer is None
    assert head.tower[1].fusion is not None


def test_fresh_initialisation_follows_official_code() -> None:
    """Inits that matter for training from scratch (OFFICIAL_CODE_NOTES "Initialisations")."""
    torch.manual_seed(0)
    cfg = _tiny_cfg(channels=64, log_scale_init=0.5)
    head = VLDyHead(cfg)
    prior = -math.log(99.0)
    assert head.bias0.item() == pytest.approx(prior)
    assert torch.allclose(head.cls_logits.bias, torch.full_like(head.cls_logits.bias, prior))
    assert head.log_scale.item() == 0.5
    assert torch.count_nonzero(head.bias_lang) == 0
    assert all(s.scale.item() == 1.0 for s in head.scales)
    for conv in (head.bbox_pred, head.centerness, head.cls_logits):
        assert 0.006 < conv.weight.std().item() < 0.014
    assert torch.count_nonzero(head.bbox_pred.bias) == 0 and torch.count_nonzero(head.centerness.bias) == 0
    layer = head.tower[0]
    assert torch.allclose(layer.fusion.gamma_v, torch.full((64,), 0.5))
    assert torch.allclose(layer.fusion.gamma_l, torch.full((cfg.language.hidden_size,), 0.5))
    for name in ("v_proj", "l_proj", "values_v_proj", "values_l_proj", "out_v_proj", "out_l_proj"):
        linear = getattr(layer.fusion.attn, name)
        fan_in, fan_out = linear.weight.shape[1], linear.weight.shape[0]
        assert torch.count_nonzero(linear.bias) == 0
        assert linear.weight.abs().max() <= math.sqrt(6.0 / (fan_in + fan_out)) + 1e-6
    for block in layer.dyconv.convs:
        assert torch.count_nonzero(block.conv.bias) == 0
        assert block.conv.weight.abs().max() <= 1 / math.sqrt(64 * 9) + 1e-6
        assert block.conv.weight.std().item() > 0.02  # uniform +-1/sqrt(fan_in), not N(0, 0.01)
    assert torch.count_nonzero(layer.dyconv.scale_attention.conv.bias) == 0
    assert layer.dyconv.scale_attention.conv.weight.std().item() < 0.02
    assert torch.count_nonzero(layer.dyconv.offset.bias) > 0  # PyTorch default init, not zero


def test_checkpointed_fusion_gives_same_gradients() -> None:
    """HeadConfig.use_checkpoint recomputes the fusion in backward: same outputs and gradients."""
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        cfg = _tiny_cfg(use_checkpoint=use_checkpoint, fusion_dropout=0.0)
        head = VLDyHead(cfg).train()
        features, language = _random_inputs(cfg)
        out = head(features, language)
        loss = sum(x.square().mean() for x in out.dot_product_logits) + sum(x.mean() for x in out.bbox_reg)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "tower.0.fusion.attn.v_proj.weight" in grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


def test_fusion_dropout_only_in_training() -> None:
    """Attention dropout is active in train mode and off in eval mode."""
    torch.manual_seed(0)
    cfg = _tiny_cfg(fusion_dropout=0.5)
    block = VLDyHead(cfg).tower[0].fusion
    features, language = _random_inputs(cfg)
    block.eval()
    with torch.no_grad():
        a = block(features, language.hidden, language.mask)[1]
        b = block(features, language.hidden, language.mask)[1]
        block.train()
        c = block(features, language.hidden, language.mask)[1]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bf16_autocast_keeps_deformable_convs_fp32() -> None:
    """Under autocast the deformable convs still run in fp32 (official custom_fwd(cast_inputs=float32))."""
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    head = VLDyHead(cfg).eval()
    features, language = _random_inputs(cfg)
    dtypes = []
    hooks = [m.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
             for m in head.modules() if isinstance(m, ModulatedDeformConv3x3)]
    with torch.no_grad():
        ref = head(features, language)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_language = dataclasses.replace(language, hidden=language.hidden.bfloat16())
            low = head([f.bfloat16() for f in features], low_language)
    for h in hooks:
        h.remove()
    assert dtypes and all(d == torch.float32 for d in dtypes)
    for a, b in zip(ref.dot_product_logits, low.dot_product_logits):
        assert torch.isfinite(b).all()
        assert (a - b.float()).abs().max() <= 0.1 * a.abs().max()
