"""Vision side of the model against the official GLIP fixture: Swin, FPN, anchors and post-processing (§2, §3, §6.1, §7)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformerBlock

from glipkit.model.boxes import grid_anchors
from glipkit.model.config import PostprocessConfig, SwinConfig, from_official_config, glip_l, glip_t
from glipkit.model.fpn import FPN, DropBlock2D
from glipkit.model.postprocess import Detections, postprocess_detections
from glipkit.model.swin import GLIPSwinBlock, SwinBackbone
from glipkit.model.weights import is_dropped_official_key, official_to_glipkit_key

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
PREFIX = FIXTURES / "glip_small_ref"
LEVELS = ("p3", "p4", "p5", "p6", "p7")
FEATURE_TOL = 1e-4  # absolute, or relative to the reference tensor's max |value|
BOX_TOL = 1e-3
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def config():
    return from_official_config(json.loads(Path(f"{PREFIX}_config.json").read_text()))


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return {
        official_to_glipkit_key(k): v
        for k, v in load_file(f"{PREFIX}.safetensors").items()
        if not is_dropped_official_key(k)
    }


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(f"{PREFIX}_io.safetensors")


def _sub_state(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def backbone(config, weights) -> SwinBackbone:
    model = SwinBackbone(config.swin).eval()
    model.load_state_dict(_sub_state(weights, "backbone."), strict=True)
    return model


@pytest.fixture(scope="module")
def fpn(config, weights) -> FPN:
    model = FPN(config.swin.stage_channels[1:], config.head.channels, config.head.fpn_drop_block).eval()
    model.load_state_dict(_sub_state(weights, "fpn."), strict=True)
    return model


def assert_close_feature(name: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual - expected).abs().max().item()
    tolerance = max(FEATURE_TOL, FEATURE_TOL * expected.abs().max().item())
    assert error <= tolerance, f"{name}: max abs error {error:.3g} > {tolerance:.3g}"
    return error


# ---------------------------------------------------------------- Swin


def test_swin_matches_official_stages(backbone, io):
    with torch.no_grad():
        features = backbone(io["input.images"])
    assert len(features) == 4
    for index, feature in enumerate(features):
        name = f"out.backbone.stage{index + 2}"
        error = assert_close_feature(name, feature, io[name])
        print(f"{name}: max abs error {error:.3g}")


def test_timm_block_order_would_differ(backbone, io):
    """timm's own `_attn` (roll, then pad) gives visibly different features on this input (§2.5)."""
    blocks = [block for stage in backbone.swin.layers for block in stage.blocks]
    try:
        for block in blocks:
            block.__class__ = SwinTransformerBlock
        with torch.no_grad():
            stage2 = backbone(io["input.images"])[0]
    finally:
        for block in blocks:
            block.__class__ = GLIPSwinBlock
    assert (stage2 - io["out.backbone.stage2"]).abs().max().item() > 1e-2


def _dense_window_attention(block: GLIPSwinBlock, x: torch.Tensor) -> torch.Tensor:
    """GLIP's window attention written as one dense attention over the padded map (independent of partitioning).

    A token at padded position p sits at (p - shift) mod Hp after the roll; tokens attend only within their window,
    pairs from different shift regions of the rolled grid get -100, and the bias uses in-window offsets (§2.3).
    """
    batch, height, width, channels = x.shape
    window, shift = block.window_size[0], block.shift_size[0]
    padded_h = math.ceil(height / window) * window
    padded_w = math.ceil(width / window) * window
    x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
    ys, xs = torch.meshgrid(torch.arange(padded_h), torch.arange(padded_w), indexing="ij")
    ry, rx = ((ys - shift) % padded_h).reshape(-1), ((xs - shift) % padded_w).reshape(-1)
    window_id = (ry // window) * (padded_w // window) + rx // window

    def region(r: torch.Tensor, length: int) -> torch.Tensor:
        return torch.where(r < length - window, 0, torch.where(r < length - shift, 1, 2))

    region_id = region(ry, padded_h) * 3 + region(rx, padded_w)
    heads = block.attn.num_heads
    qkv = block.attn.qkv(x.reshape(batch, -1, channels)).reshape(batch, -1, 3, heads, channels // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    logits = (q * (channels // heads) ** -0.5) @ k.transpose(-1, -2)
    dy = (ry % window)[:, None] - (ry % window)[None, :] + window - 1
    dx = (rx % window)[:, None] - (rx % window)[None, :] + window - 1
    bias = block.attn.relative_position_bias_table[dy * (2 * window - 1) + dx]  # (N, N, heads)
    logits = logits + bias.permute(2, 0, 1)
    if shift:
        logits = logits + (region_id[:, None] != region_id[None, :]) * -100.0
    logits = logits.masked_fill(window_id[:, None] != window_id[None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, -1, channels)
    out = block.attn.proj(out).reshape(batch, padded_h, padded_w, channels)
    return out[:, :height, :width]


@pytest.mark.parametrize("size", [(4, 4), (7, 7), (9, 12), (10, 15), (14, 3), (16, 8)])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_dense_reference(size, shifted):
    """Full window and shift even on maps smaller than the window; pad-then-roll; masks on the padded grid."""
    torch.manual_seed(0)
    model = SwinBackbone(SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 2, 2), window_size=7,
                                    drop_path_rate=0.0)).double().eval()
    block = model.swin.layers[0].blocks[1 if shifted else 0]
    assert block.window_size == (7, 7) and block.shift_size == ((3, 3) if shifted else (0, 0))
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)
        x = torch.randn(2, *size, 16, dtype=torch.float64)
        expected = _dense_window_attention(block, x)
        actual = block._attn(x)
    assert actual.shape == x.shape
    assert (actual - expected).abs().max().item() < 1e-10


def test_swin_any_size_divisible_by_32():
    model = SwinBackbone(SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=7,
                                    drop_path_rate=0.0)).eval()
    with torch.no_grad():
        for height, width in [(64, 96), (256, 160), (32, 32)]:
            features = model(torch.randn(1, 3, height, width))
            for stride, channels, feature in zip((4, 8, 16, 32), (16, 32, 64, 128), features):
                assert feature.shape == (1, channels, height // stride, width // stride)
                assert torch.isfinite(feature).all()
    # The full-size case (800x1344, stride-4 map 200x336 is no multiple of 7), shapes only, on the meta device.
    with torch.device("meta"):
        full = SwinBackbone(glip_t().swin).eval()
        features = full(torch.empty(1, 3, 800, 1344))
    assert [tuple(f.shape) for f in features] == [(1, 96, 200, 336), (1, 192, 100, 168), (1, 384, 50, 84),
                                                  (1, 768, 25, 42)]


def test_drop_path_schedule_is_global_linspace():
    cfg = glip_t().swin
    with torch.device("meta"):
        model = SwinBackbone(cfg)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for stage in model.swin.layers for block in stage.blocks]
    expected = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
    assert rates == pytest.approx(expected, abs=1e-7)


def _official_keys(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith(prefix) and not is_dropped_official_key(key):
            keys[official_to_glipkit_key(key)] = tuple(ast.literal_eval(shape))
    return keys


@pytest.mark.parametrize("preset, key_file, body_params, fpn_params", [
    (glip_t, "glip_t_state_dict_keys.tsv", 27_520_506, 3_295_232),
    (glip_l, "glip_l_state_dict_keys.tsv", 195_200_820, 3_639_296),
])
def test_full_size_backbone_and_fpn_on_meta(preset, key_file, body_params, fpn_params):
    """Swin-T / Swin-L and their FPNs: parameter counts of §11 and the official keys with the same shapes."""
    cfg = preset()
    with torch.device("meta"):
        backbone = SwinBackbone(cfg.swin)
        fpn = FPN(cfg.swin.stage_channels[1:], cfg.head.channels, cfg.head.fpn_drop_block)
    assert sum(p.numel() for p in backbone.parameters()) == body_params
    assert sum(p.numel() for p in fpn.parameters()) == fpn_params
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    ours.update({f"fpn.{k}": tuple(v.shape) for k, v in fpn.state_dict().items()})
    assert ours == _official_keys(key_file, "backbone.")


def test_freeze_follows_official_stage_layout():
    """FREEZE_CONV_BODY_AT=2 (GLIP-L): exactly the official patch_embed.* and layers.0.* (with its PatchMerging)."""
    with torch.device("meta"):
        model = SwinBackbone(glip_t().swin)
    model.freeze(2)
    model.train()
    frozen = {f"backbone.{name}" for name, p in model.named_parameters() if not p.requires_grad}
    official = {k for k in _official_keys("glip_t_state_dict_keys.tsv", "backbone.body.")}
    expected = {k for k in official if k.startswith("backbone.swin.patch_embed.")}
    for line in (FIXTURES / "glip_t_state_dict_keys.tsv").read_text().splitlines():
        key = line.split("\t")[0]
        if key.startswith("backbone.body.layers.0.") and not is_dropped_official_key(key):
            expected.add(official_to_glipkit_key(key))
    assert frozen == expected and len(expected) > 20
    assert not model.swin.layers[0].blocks[1].training and not model.swin.layers[1].downsample.training
    assert model.swin.layers[1].blocks[0].training and model.training


# ---------------------------------------------------------------- FPN


def test_fpn_matches_official(fpn, io):
    with torch.no_grad():
        levels = fpn([io[f"out.backbone.stage{i}"] for i in (3, 4, 5)])
    assert len(levels) == 5
    for name, level in zip(LEVELS, levels):
        error = assert_close_feature(f"out.fpn.{name}", level, io[f"out.fpn.{name}"])
        print(f"out.fpn.{name}: max abs error {error:.3g}")


def test_fpn_drop_block_only_in_training_on_p3_p4(fpn, io):
    inputs = [io[f"out.backbone.stage{i}"] for i in (3, 4, 5)]
    torch.manual_seed(0)
    try:
        fpn.train()
        with torch.no_grad():
            trained = fpn(inputs)
    finally:
        fpn.eval()
    for name, level in zip(LEVELS, trained):
        difference = (level - io[f"out.fpn.{name}"]).abs().max().item()
        if name in ("p3", "p4"):
            assert difference > 1e-2, name
        else:  # P5 has no DropBlock and P6/P7 are built from P5
            assert difference == 0.0, name


def test_drop_block_statistics():
    torch.manual_seed(0)
    drop = DropBlock2D(0.3, 3)
    x = torch.ones(8, 4, 40, 60)
    assert drop.eval()(x) is x
    out = drop.train()(x)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # one mask for all channels
    kept = out[~zero]
    assert torch.allclose(kept, kept[0].expand_as(kept))  # kept values rescaled by numel / kept
    assert out.mean().item() == pytest.approx(1.0, abs=1e-5)
    # 1 - (1 - gamma)^9 of the positions are dropped (away from the border), gamma = 0.3 / 9.
    assert zero.float().mean().item() == pytest.approx(1 - (1 - 0.3 / 9) ** 9, abs=0.03)


# ---------------------------------------------------------------- anchors


def test_anchors_match_official(config, io):
    sizes = [tuple(io[f"out.fpn.{name}"].shape[-2:]) for name in LEVELS]
    anchors = grid_anchors(sizes, config.head.anchor_strides, config.head.anchor_sizes)
    for name, level in zip(LEVELS, anchors):
        assert torch.equal(level, io[f"out.anchors.{name}"]), name


# ---------------------------------------------------------------- post-processing


def _head_outputs(io):
    return (
        [io[f"out.head.bbox_reg.{n}"] for n in LEVELS],
        [io[f"out.head.centerness.{n}"] for n in LEVELS],
        [io[f"out.head.dot_product_logits.{n}"] for n in LEVELS],
        [io[f"out.anchors.{n}"] for n in LEVELS],
    )


def _canonical_order(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Score descending, then label, then box (the fixture's canonical order)."""
    rows = [(-s, lab, *b) for s, lab, b in zip(scores.tolist(), labels.tolist(), boxes.tolist())]
    return sorted(range(len(rows)), key=rows.__getitem__)


def assert_same_detections(name: str, ours: Detections, boxes, scores, labels) -> tuple[float, float]:
    """Equal as sets: every reference row has its own match (same 1-based label, score and box within tolerance)."""
    assert len(ours) == len(scores), f"{name}: {len(ours)} detections, official {len(scores)}"
    ours_labels = ours.labels + 1
    order = _canonical_order(ours.boxes, ours.scores, ours_labels)
    ours_boxes, ours_scores, ours_labels = ours.boxes[order], ours.scores[order], ours_labels[order]
    ref_order = _canonical_order(boxes, scores, labels)
    boxes, scores, labels = boxes[ref_order], scores[ref_order], labels[ref_order]
    if torch.equal(ours_labels, labels):
        box_error = (ours_boxes - boxes).abs().max().item() if len(scores) else 0.0
        score_error = (ours_scores - scores).abs().max().item() if len(scores) else 0.0
        if box_error <= BOX_TOL and score_error <= SCORE_TOL:
            return box_error, score_error
    # Near-ties may order differently: match greedily instead.
    fits = ((ours_labels[None, :] == labels[:, None])
            & ((ours_scores[None, :] - scores[:, None]).abs() <= SCORE_TOL)
            & ((ours_boxes[None, :, :] - boxes[:, None, :]).abs().amax(-1) <= BOX_TOL))
    used = torch.zeros(len(ours_scores), dtype=torch.bool)
    box_error = score_error = 0.0
    for row in range(len(scores)):
        free = torch.nonzero(fits[row] & ~used).flatten()
        assert free.numel(), f"{name}: official row {row} (label {labels[row]}, score {scores[row]:.6f}, " \
                             f"box {boxes[row].tolist()}) has no match"
        used[free[0]] = True
        box_error = max(box_error, (ours_boxes[free[0]] - boxes[row]).abs().max().item())
        score_error = max(score_error, (ours_scores[free[0]] - scores[row]).abs().item())
    return box_error, score_error


def test_postprocess_matches_official(config, io):
    """Both images in one call, each with its own positive map (the official code ran one prompt per pass)."""
    bbox_reg, centerness, logits, anchors = _head_outputs(io)
    positive_maps = [io["input.positive_map.img0"], io["input.positive_map.img1"]]
    image_sizes = [tuple(s) for s in io["input.image_sizes"].tolist()]
    results = postprocess_detections(bbox_reg, centerness, logits, anchors, positive_maps, image_sizes,
                                     config.postprocess, return_candidates=True)
    assert len(results) == 2
    for image, result in enumerate(results):
        for kind, detections in (("prenms", result.candidates), ("det", result)):
            name = f"out.{kind}.img{image}"
            box_error, score_error = assert_same_detections(
                name, detections, io[f"{name}.boxes"], io[f"{name}.scores"], io[f"{name}.labels"])
            print(f"{name}: {len(detections)} rows, max box error {box_error:.3g}, max score error {score_error:.3g}")
        assert torch.all(result.scores[:-1] >= result.scores[1:])
        assert result.boxes.dtype == torch.float32 and result.labels.dtype == torch.int64


def test_postprocess_without_candidates_by_default(config, io):
    bbox_reg, centerness, logits, anchors = _head_outputs(io)
    results = postprocess_detections(bbox_reg, centerness, logits, anchors, [io["input.positive_map.img0"]] * 2,
                                     [(320, 480)] * 2, config.postprocess)
    assert all(r.candidates is None for r in results)


def test_postprocess_empty_phrase_rows_never_detect(config, io):
    bbox_reg, centerness, logits, anchors = _head_outputs(io)
    positive_map = io["input.positive_map.img0"]
    image_sizes = [tuple(s) for s in io["input.image_sizes"].tolist()]
    # Image 0: an all-zero phrase inserted at index 1; image 1: no phrases at all.
    padded = torch.cat([positive_map[:1], torch.zeros_like(positive_map[:1]), positive_map[1:]])
    results = postprocess_detections(bbox_reg, centerness, logits, anchors,
                                     [padded, torch.zeros(0, positive_map.shape[1])], image_sizes, config.postprocess)
    reference = (io["out.det.img0.boxes"], io["out.det.img0.scores"], io["out.det.img0.labels"])
    assert 1 not in results[0].labels.tolist()
    remapped = Detections(results[0].boxes, results[0].scores, torch.where(results[0].labels >= 2,
                                                                           results[0].labels - 1, results[0].labels))
    assert_same_detections("empty-phrase", remapped, *reference)
    assert len(results[1]) == 0 and results[1].boxes.shape == (0, 4)


def _single_level(probabilities: list[list[float]], centerness: list[float]):
    """Head outputs for one 1xN level (stride 8): boxes shrunk to 1 px at the anchor centres, so no overlap."""
    n = len(centerness)
    logits = torch.logit(torch.tensor(probabilities, dtype=torch.float64)).float()  # (N, tokens)
    deltas = torch.zeros(1, 4, 1, n)
    deltas[:, 2:] = 5 * math.log(1 / 64)  # anchor side 64 -> width 1
    anchors = grid_anchors([(1, n)], [8], [64])
    return [deltas], [torch.tensor(centerness).view(1, 1, 1, n)], [logits[None]], anchors


def test_postprocess_scoring_rules():
    """Mean of token probabilities; threshold before centerness; per-level top-k; sqrt; kthvalue ties keep more."""
    probabilities = [
        [0.90, 0.01, 0.01],  # phrase 0 (tokens 0, 1): mean 0.455
        [0.70, 0.70, 0.01],  # 0.70
        [0.70, 0.70, 0.01],  # 0.70 (tie with the previous one)
        [0.20, 0.10, 0.01],  # 0.15
        [0.08, 0.08, 0.01],  # 0.08 > 0.05, kept although score * centerness is small
        [0.04, 0.04, 0.01],  # 0.04 < 0.05: never a candidate, even with centerness 1
        [0.01, 0.01, 0.01],
    ]
    centerness = [30.0, 30.0, 30.0, 30.0, -3.0, 30.0, 30.0]  # sigmoid(30) == 1 in float32
    positive_map = torch.tensor([[1.0, 1.0, 0.0]])
    bbox_reg, ctr, logits, anchors = _single_level(probabilities, centerness)
    cfg = PostprocessConfig(score_threshold=0.05, pre_nms_top_n=1000, nms_threshold=0.6, detections_per_image=2)
    result = postprocess_detections(bbox_reg, ctr, logits, anchors, [positive_map], [(8, 56)], cfg,
                                    return_candidates=True)[0]
    expected_candidates = [0.455, 0.70, 0.70, 0.15, 0.08 * torch.sigmoid(torch.tensor(-3.0)).item()]
    assert sorted(result.candidates.scores.tolist()) == pytest.approx(sorted(math.sqrt(s) for s in expected_candidates),
                                                                      abs=1e-6)
    # Two detections asked for, the 2nd largest score is tied: both tied boxes stay (three in all would be wrong).
    assert result.scores.tolist() == pytest.approx([math.sqrt(0.70)] * 2, abs=1e-6)
    assert sorted(result.boxes[:, 0].tolist()) == pytest.approx([8 + 3.5, 16 + 3.5])
    cfg.detections_per_image = 3
    result = postprocess_detections(bbox_reg, ctr, logits, anchors, [positive_map], [(8, 56)], cfg)[0]
    assert result.scores.tolist() == pytest.approx([math.sqrt(0.70)] * 2 + [math.sqrt(0.455)], abs=1e-6)
    cfg.pre_nms_top_n = 2  # per level: the two best of score * centerness
    result = postprocess_detections(bbox_reg, ctr, logits, anchors, [positive_map], [(8, 56)], cfg,
                                    return_candidates=True)[0]
    assert result.candidates.scores.tolist() == pytest.approx([math.sqrt(0.70)] * 2, abs=1e-6)
    assert result.labels.tolist() == [0, 0]
