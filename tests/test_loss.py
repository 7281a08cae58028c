"""GLIP grounding loss (GLIP_SPEC.md §8): ATSS assignment and loss values against formulas written out here."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pytest
import torch

from glipkit.model.boxes import grid_anchors
from glipkit.model.loss import (
    GroundingLoss,
    GroundingTargets,
    atss_assign,
    build_positive_map,
    grounding_loss,
)

# ---------------------------------------------------------------------------------------------------------
# Independent scalar reference (plain Python floats, formulas as written in GLIP_SPEC.md §6.4 and §8).


def ref_iou(a, b):
    """IoU with the +1 convention."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def ref_centre(box):
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def ref_decode(d, a):
    aw, ah = a[2] - a[0] + 1, a[3] - a[1] + 1
    ax, ay = ref_centre(a)
    clip = math.log(1000 / 16)
    cx, cy = d[0] / 10 * aw + ax, d[1] / 10 * ah + ay
    w, h = math.exp(min(d[2] / 5, clip)) * aw, math.exp(min(d[3] / 5, clip)) * ah
    return (cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2)


def ref_encode(g, a):
    aw, ah = a[2] - a[0] + 1, a[3] - a[1] + 1
    gw, gh = g[2] - g[0] + 1, g[3] - g[1] + 1
    (ax, ay), (gx, gy) = ref_centre(a), ref_centre(g)
    return (10 * (gx - ax) / aw, 10 * (gy - ay) / ah, 5 * math.log(gw / aw), 5 * math.log(gh / ah))


def ref_giou(p, t):
    px1, py1, px2, py2 = p
    px2, py2 = max(px1, px2), max(py1, py2)
    tx1, ty1, tx2, ty2 = t
    iw, ih = min(px2, tx2) - max(px1, tx1), min(py2, ty2) - max(py1, ty1)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter + 1e-7
    enclose = (max(px2, tx2) - min(px1, tx1)) * (max(py2, ty2) - min(py1, ty1)) + 1e-7
    return inter / union - (enclose - union) / enclose


def ref_centerness(gt, anchor):
    cx, cy = ref_centre(anchor)
    l, t, r, b = cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy
    return math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))


def ref_bce(x, y):
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def ref_focal(x, y, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return alpha_t * (1 - p_t) ** gamma * ref_bce(x, y)


def ref_atss(levels, gts, topk=9):
    """Brute-force ATSS over Python lists; also reports the smallest margin to a tie that would make it ambiguous."""
    anchors = [a for level in levels for a in level]
    positive_for = [dict() for _ in anchors]  # anchor -> {gt: iou}
    min_gap = math.inf
    for g, gt in enumerate(gts):
        gc = ref_centre(gt)
        candidates, start = [], 0
        for level in levels:
            dist = sorted(
                (math.dist(ref_centre(a), gc), start + i) for i, a in enumerate(level)
            )
            k = min(topk, len(level))
            if k < len(level):
                min_gap = min(min_gap, dist[k][0] - dist[k - 1][0])
            candidates += [i for _, i in dist[:k]]
            start += len(level)
        ious = [ref_iou(anchors[i], gt) for i in candidates]
        thr = statistics.mean(ious) + statistics.stdev(ious)
        for i, iou in zip(candidates, ious):
            min_gap = min(min_gap, abs(iou - thr) if iou != thr else math.inf)
            cx, cy = ref_centre(anchors[i])
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01
            if iou >= thr and inside:
                positive_for[i][g] = iou
    assigned = []
    for cands in positive_for:
        assigned.append(max(cands, key=lambda g: (cands[g], -g)) if cands else -1)
    shared = sum(len(c) > 1 for c in positive_for)
    return assigned, min_gap, shared


@dataclass
class Case:
    levels: list  # per level list of anchor boxes
    gts: list  # per image list of gt boxes
    tokens: list  # per image list of token index lists
    text_mask: list  # per image list of 0/1
    assigned: list  # per image expected matched gt per anchor


@dataclass
class Outputs:
    bbox_reg: list
    centerness: list
    dot_product_logits: list


def make_inputs(case: Case, shapes: list, seed: int = 0, requires_grad: bool = True):
    """Random head outputs for a case; `shapes` holds (H, W) per level."""
    gen = torch.Generator().manual_seed(seed)
    batch, num_tokens = len(case.gts), len(case.text_mask[0])
    bbox_reg = [(0.5 * torch.randn(batch, 4, h, w, generator=gen)).requires_grad_(requires_grad) for h, w in shapes]
    centerness = [torch.randn(batch, 1, h, w, generator=gen).requires_grad_(requires_grad) for h, w in shapes]
    logits = [
        (2 * torch.randn(batch, h * w, num_tokens, generator=gen)).requires_grad_(requires_grad) for h, w in shapes
    ]
    anchors = [torch.tensor(level, dtype=torch.float32) for level in case.levels]
    targets = [
        GroundingTargets(torch.tensor(g, dtype=torch.float32).reshape(-1, 4), build_positive_map(t, num_tokens))
        for g, t in zip(case.gts, case.tokens)
    ]
    mask = torch.tensor(case.text_mask)
    return Outputs(bbox_reg, centerness, logits), anchors, targets, mask


def ref_loss(case: Case, outputs: Outputs, world_num_pos=None, world_ctr_sum=None, world_size=1):
    """The §8 loss from the case's expected assignment, element by element."""
    flat_reg = torch.cat([x.detach().permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4) for x in outputs.bbox_reg], 1)
    flat_ctr = torch.cat([x.detach().reshape(x.shape[0], -1) for x in outputs.centerness], 1)
    flat_logits = torch.cat([x.detach() for x in outputs.dot_product_logits], 1)
    anchors = [a for level in case.levels for a in level]
    num_tokens = len(case.text_mask[0])
    focal_sum, giou_terms, ctr_terms, ctr_targets = 0.0, [], [], []
    for b, assigned in enumerate(case.assigned):
        for n, g in enumerate(assigned):
            for t in range(num_tokens):
                if not case.text_mask[b][t]:
                    continue
                if g >= 0:
                    y = 1.0 if t in case.tokens[b][g] else 0.0
                else:
                    y = 1.0 if t == num_tokens - 1 else 0.0  # §8.1 [NoObj] slot
                focal_sum += ref_focal(flat_logits[b, n, t].item(), y)
            if g >= 0:
                # §8.3/§8.4: the target box is the encoded GT decoded again (the coder clamps huge ratios).
                target = ref_decode(ref_encode(case.gts[b][g], anchors[n]), anchors[n])
                ctr = ref_centerness(target, anchors[n])
                pred = ref_decode(flat_reg[b, n].tolist(), anchors[n])
                giou_terms.append((1 - ref_giou(pred, target)) * ctr)
                ctr_terms.append(ref_bce(flat_ctr[b, n].item(), ctr))
                ctr_targets.append(ctr)
    num_pos = len(ctr_targets) if world_num_pos is None else world_num_pos
    ctr_sum = sum(ctr_targets) if world_ctr_sum is None else world_ctr_sum
    num_pos_avg = max(num_pos / world_size, 1.0)
    reg = 2.0 * sum(giou_terms) / (ctr_sum / world_size) if ctr_targets else 0.0
    ctr = sum(ctr_terms) / num_pos_avg
    token = focal_sum / num_pos_avg
    return {"loss_reg": reg, "loss_centerness": ctr, "loss_dot_product_token": token, "loss": reg + ctr + token}


def assert_matches(losses, expected, rel=1e-5, abs_=1e-6):
    for key, value in expected.items():
        assert losses[key].dtype == torch.float32
        assert losses[key].item() == pytest.approx(value, rel=rel, abs=abs_), key


# ---------------------------------------------------------------------------------------------------------
# Hand-made cases.

# Two anchors side by side, one box straddling both symmetrically: equal IoUs (144 / 400 = 0.36 with +1), so
# std = 0, threshold = 0.36 and both anchors are positive (their centres are inside the box).
TWO_ANCHORS = Case(
    levels=[[[0, 0, 15, 15], [16, 0, 31, 15]]],
    gts=[[[4, 2, 27, 13]]],
    tokens=[[[1, 2]]],  # "[CLS] red ball [SEP] [PAD]": the phrase "red ball" is tokens 1, 2
    text_mask=[[1, 1, 1, 1, 0]],
    assigned=[[0, 0]],
)

# A 1x3 row of 32 px anchors, two images. Image 0: the box sits in anchor 0 (IoU 0.609 vs 0, 0: threshold
# mean + std = 0.609 * (1/3 + 1/sqrt(3)) = 0.555), so anchor 0 is positive. Image 1: likewise anchor 2.
# Image 1's prompt fills all 8 positions, so its negatives get the [NoObj] target 1 at position 7 (§8.1).
ROW_OF_THREE = Case(
    levels=[[[0, 0, 31, 31], [32, 0, 63, 31], [64, 0, 95, 31]]],
    gts=[[[4, 4, 27, 29]], [[66.5, 3, 90, 28.5]]],
    tokens=[[[1, 2]], [[4]]],
    text_mask=[[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
    assigned=[[0, -1, -1], [-1, -1, 0]],
)

# A 201 px box over a 2 px anchor: the width ratio 100.5 exceeds 1000/16, so decoding the encoded target clamps
# it to 125 px (§6.4) and GIoU and centerness use that decoded box, as the official code does (§8.3, §8.4).
# IoUs: v for the one small anchor inside, 0 for the two far ones -> threshold 0.91 v, the small anchor is positive.
HUGE_GT = Case(
    levels=[[[50, 50, 51, 51]], [[300, 300, 301, 301], [310, 300, 311, 301]]],
    gts=[[[0, 0, 200, 200]]],
    tokens=[[[1]]],
    text_mask=[[1, 1, 1, 0]],
    assigned=[[0, -1, -1]],
)


def test_build_positive_map():
    pm = build_positive_map([[1, 2], [4], []], length=6)
    assert pm.dtype == torch.float32
    assert pm.tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]
    assert build_positive_map([], length=4).shape == (0, 4)
    with pytest.raises(ValueError, match="box 1"):
        build_positive_map([[1], [3, 6]], length=6)


def test_atss_hand_made_row():
    anchors = [torch.tensor(ROW_OF_THREE.levels[0], dtype=torch.float32)]
    assert atss_assign(anchors, torch.tensor([[4.0, 4, 27, 29]])).tolist() == [0, -1, -1]
    assert atss_assign(anchors, torch.tensor([[66.5, 3, 90, 28.5]])).tolist() == [-1, -1, 0]
    # Two symmetric anchors: equal IoUs, zero std, both positive.
    two = [torch.tensor(TWO_ANCHORS.levels[0], dtype=torch.float32)]
    assert atss_assign(two, torch.tensor([[4.0, 2, 27, 13]])).tolist() == [0, 0]
    # One anchor in total: the unbiased std is undefined (NaN in the official code), so nothing is positive.
    assert atss_assign([two[0][:1]], torch.tensor([[4.0, 2, 27, 13]])).tolist() == [-1]
    # No GT: everything negative.
    assert atss_assign(two, torch.zeros(0, 4)).tolist() == [-1, -1]
    huge = [torch.tensor(level, dtype=torch.float32) for level in HUGE_GT.levels]
    assert atss_assign(huge, torch.tensor(HUGE_GT.gts[0])).tolist() == HUGE_GT.assigned[0]
    decoded = ref_decode(ref_encode(HUGE_GT.gts[0][0], HUGE_GT.levels[0][0]), HUGE_GT.levels[0][0])
    assert decoded[2] - decoded[0] + 1 == pytest.approx(2 * 1000 / 16)  # the clamp matters in that case


def test_atss_matches_brute_force_on_small_grids():
    # Three levels: 6x6 (36 anchors), 3x3 (exactly 9) and 1x2 (fewer than 9 anchors).
    levels_t = grid_anchors([(6, 6), (3, 3), (1, 2)], strides=[8, 16, 32], sizes=[32, 64, 128])
    levels = [level.tolist() for level in levels_t]
    gen = torch.Generator().manual_seed(0)
    checked, shared_total, positives = 0, 0, 0
    for _ in range(60):
        num_gt = int(torch.randint(1, 5, (1,), generator=gen))
        xy = torch.rand(num_gt, 2, generator=gen) * 40
        wh = 6 + torch.rand(num_gt, 2, generator=gen) * 40
        gts = torch.cat([xy, xy + wh], dim=1)
        expected, gap, shared = ref_atss(levels, gts.tolist())
        if gap < 1e-4:  # a near tie in distance or threshold: float32 may legitimately decide either way
            continue
        assert atss_assign(levels_t, gts).tolist() == expected
        checked += 1
        shared_total += shared
        positives += sum(e >= 0 for e in expected)
    assert checked >= 50
    assert shared_total > 0, "no anchor was positive for two GTs: the highest-IoU rule went untested"
    assert positives > 3 * checked


@pytest.mark.parametrize("case", [TWO_ANCHORS, ROW_OF_THREE, HUGE_GT], ids=["two_anchors", "row_of_three", "huge_gt"])
def test_loss_equals_formulas(case):
    shapes = [(1, len(level)) for level in case.levels]
    outputs, anchors, targets, mask = make_inputs(case, shapes)
    losses = GroundingLoss()(outputs, anchors, targets, mask)
    assert set(losses) == {"loss_reg", "loss_centerness", "loss_dot_product_token", "loss"}
    assert_matches(losses, ref_loss(case, outputs))


def test_loss_with_a_collapsed_predicted_box():
    # exp(-25 / 5) * 32 px < 1 px: the +1 decode gives x2 < x1 and y2 < y1, which §8.3 raises to x1, y1.
    outputs, anchors, targets, mask = make_inputs(ROW_OF_THREE, [(1, 3)], requires_grad=False)
    outputs.bbox_reg[0][0, :, 0, 0] = torch.tensor([0.3, -0.2, -25.0, -25.0])
    flat = outputs.bbox_reg[0].permute(0, 2, 3, 1).reshape(2, 3, 4)
    box = ref_decode(flat[0, 0].tolist(), ROW_OF_THREE.levels[0][0])
    assert box[2] < box[0] and box[3] < box[1]
    assert_matches(GroundingLoss()(outputs, anchors, targets, mask), ref_loss(ROW_OF_THREE, outputs))


def test_no_obj_slot_only_counts_when_prompt_fills_every_position():
    case = ROW_OF_THREE
    outputs, anchors, targets, mask = make_inputs(case, [(1, 3)])
    full = grounding_loss(outputs.bbox_reg, outputs.centerness, outputs.dot_product_logits, anchors, targets, mask)
    # With a negative target of 0 at position 7 instead, image 1's negatives would give a different loss.
    logits = torch.cat([x.detach() for x in outputs.dot_product_logits], 1)
    diff = sum(ref_focal(logits[1, n, 7].item(), 1.0) - ref_focal(logits[1, n, 7].item(), 0.0) for n in (0, 1))
    assert abs(diff) > 1e-3
    no_obj_zero = ref_loss(case, outputs)["loss_dot_product_token"] - diff / 2  # 2 positives
    assert full["loss_dot_product_token"].item() != pytest.approx(no_obj_zero, rel=1e-4)
    assert_matches(full, ref_loss(case, outputs))


def test_gradients_reach_all_inputs_only_where_they_should():
    outputs, anchors, targets, mask = make_inputs(ROW_OF_THREE, [(1, 3)])
    GroundingLoss()(outputs, anchors, targets, mask)["loss"].backward()
    reg_grad = outputs.bbox_reg[0].grad.permute(0, 2, 3, 1).reshape(2, 3, 4)
    ctr_grad = outputs.centerness[0].grad.reshape(2, 3)
    logit_grad = outputs.dot_product_logits[0].grad
    positive = torch.tensor([[True, False, False], [False, False, True]])
    assert (reg_grad[positive].abs().sum(-1) > 0).all() and (reg_grad[~positive] == 0).all()
    assert (ctr_grad[positive] != 0).all() and (ctr_grad[~positive] == 0).all()
    text = torch.tensor(ROW_OF_THREE.text_mask, dtype=torch.bool)[:, None, :].expand_as(logit_grad)
    assert (logit_grad[text] != 0).all() and (logit_grad[~text] == 0).all()


@pytest.mark.parametrize("gts", [[[]], [[[300.0, 300, 340, 350]]]], ids=["no_gt", "gt_off_grid"])
def test_no_positives(gts):
    case = Case(levels=ROW_OF_THREE.levels, gts=gts, tokens=[[[1]] if gts[0] else []], text_mask=[[1, 1, 1, 0]],
                assigned=[[-1, -1, -1]])
    outputs, anchors, targets, mask = make_inputs(case, [(1, 3)])
    losses = GroundingLoss()(outputs, anchors, targets, mask)
    for key in losses:
        assert torch.isfinite(losses[key]) and losses[key].requires_grad
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    assert_matches(losses, ref_loss(case, outputs))  # token loss over negatives only, / max(0, 1)
    losses["loss"].backward()
    for x in (outputs.bbox_reg[0], outputs.centerness[0], outputs.dot_product_logits[0]):
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (outputs.bbox_reg[0].grad == 0).all()


def test_half_precision_inputs_are_computed_in_fp32():
    outputs, anchors, targets, mask = make_inputs(ROW_OF_THREE, [(1, 3)], requires_grad=False)
    half = Outputs(*[[x.to(torch.bfloat16) for x in xs] for xs in (outputs.bbox_reg, outputs.centerness,
                                                                      outputs.dot_product_logits)])
    as_fp32 = Outputs(*[[x.float() for x in xs] for xs in (half.bbox_reg, half.centerness, half.dot_product_logits)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = GroundingLoss()(half, anchors, targets, mask)
    expected = GroundingLoss()(as_fp32, anchors, targets, mask)
    for key in expected:
        assert losses[key].dtype == torch.float32
        assert losses[key].item() == pytest.approx(expected[key].item(), rel=1e-6)


def test_shape_mismatch_is_a_clear_error():
    outputs, anchors, targets, mask = make_inputs(ROW_OF_THREE, [(1, 3)])
    targets[0] = GroundingTargets(targets[0].boxes, build_positive_map([[1, 2]], 256))
    with pytest.raises(ValueError, match="positive map"):
        GroundingLoss()(outputs, anchors, targets, mask)
    with pytest.raises(ValueError, match="anchor counts"):
        GroundingLoss()(outputs, anchors[:1] + [anchors[0][:1]], targets, mask)


def test_optimising_the_outputs_converges_to_the_target():
    anchors = grid_anchors([(4, 4)], strides=[16], sizes=[32])
    gt = [10.3, 12.6, 41.2, 50.7]
    targets = [GroundingTargets(torch.tensor([gt]), build_positive_map([[1, 2]], 6))]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    reg = torch.zeros(1, 4, 4, 4, requires_grad=True)
    ctr = torch.zeros(1, 1, 4, 4, requires_grad=True)
    logits = torch.full((1, 16, 6), -4.6, requires_grad=True)
    optimiser = torch.optim.Adam([reg, ctr, logits], lr=0.05)
    loss_fn = GroundingLoss()
    first = None
    for _ in range(300):
        losses = loss_fn(Outputs([reg], [ctr], [logits]), anchors, targets, mask)
        first = first if first is not None else {k: v.item() for k, v in losses.items()}
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
    assert losses["loss_reg"].item() < 0.02 * first["loss_reg"]
    assert losses["loss_dot_product_token"].item() < 0.01 * first["loss_dot_product_token"]

    matched = atss_assign(anchors, torch.tensor([gt]))
    positive = (matched == 0).nonzero().squeeze(1).tolist()
    assert len(positive) >= 2
    # BCE with a soft target cannot go below the target's entropy: the centerness loss must reach that floor.
    targets_ctr = [ref_centerness(gt, anchors[0][n].tolist()) for n in positive]
    entropy = sum(-(c * math.log(c) + (1 - c) * math.log(1 - c)) for c in targets_ctr) / len(positive)
    assert first["loss_centerness"] - entropy > 1e-3
    assert losses["loss_centerness"].item() == pytest.approx(entropy, abs=1e-4)
    flat_reg = reg.detach().permute(0, 2, 3, 1).reshape(16, 4)
    probs = torch.sigmoid(logits.detach()[0])
    for n in positive:
        assert ref_iou(ref_decode(flat_reg[n].tolist(), anchors[0][n].tolist()), gt) > 0.97
        assert torch.sigmoid(ctr.detach().reshape(16)[n]).item() == pytest.approx(
            ref_centerness(gt, anchors[0][n].tolist()), abs=0.05)
        assert (probs[n, [1, 2]] > 0.5).all() and (probs[n, [0, 3]] < 0.5).all()
    negative = [n for n in range(16) if n not in positive]
    assert (probs[negative][:, :4] < 0.5).all()


# ---------------------------------------------------------------------------------------------------------
# Normalisers averaged over ranks (2-process gloo).


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import datetime

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        if rank == 0:
            case = ROW_OF_THREE
        else:  # no positives on this rank: it must still join the all-reduce
            case = Case(levels=ROW_OF_THREE.levels, gts=[[], []], tokens=[[], []], text_mask=ROW_OF_THREE.text_mask,
                        assigned=[[-1] * 3, [-1] * 3])
        outputs, anchors, targets, mask = make_inputs(case, [(1, 3)], seed=rank)
        losses = GroundingLoss()(outputs, anchors, targets, mask)
        losses["loss"].backward()
        torch.save({k: v.item() for k, v in losses.items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_normalisers_are_averaged_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")

    outputs0 = make_inputs(ROW_OF_THREE, [(1, 3)], seed=0)[0]
    local = ref_loss(ROW_OF_THREE, outputs0)
    # Rank 0 holds both positives: num_pos_avg = max(2 / 2, 1) = 1 and the centerness sum is halved.
    anchors = ROW_OF_THREE.levels[0]
    ctr_sum = ref_centerness(ROW_OF_THREE.gts[0][0], anchors[0]) + ref_centerness(ROW_OF_THREE.gts[1][0], anchors[2])
    expected0 = ref_loss(ROW_OF_THREE, outputs0, world_num_pos=2, world_ctr_sum=ctr_sum, world_size=2)
    assert expected0["loss_reg"] == pytest.approx(2 * local["loss_reg"])
    assert expected0["loss_dot_product_token"] == pytest.approx(2 * local["loss_dot_product_token"])
    for key, value in expected0.items():
        assert rank0[key] == pytest.approx(value, rel=1e-5), key
    assert rank1["loss_reg"] == 0 and rank1["loss_centerness"] == 0 and rank1["loss_dot_product_token"] > 0
