"""Self-training recipes of train-student (issue 13), each on hand-made inputs: per-box loss weights (no box loss,
score-aware token loss), pseudo negatives, negative caption packing, and weight-space averaging."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_loss import ROW_OF_THREE, make_inputs
from typer.testing import CliRunner

from glipkit.cli.app import _register_commands, app
from glipkit.data.augment import TrainTransform
from glipkit.data.collate import GroundingCollator
from glipkit.data.grounding_example import GroundingExample
from glipkit.data.pseudo import PseudoFilter, PseudoLabelSource, PseudoRecipe
from glipkit.data.shards import write_shard
from glipkit.data.tables import LABELS_SCHEMA, write_table
from glipkit.demo.samples import CATEGORIES, make_samples
from glipkit.demo.vocab import write_vocab
from glipkit.engine.training.config import DataOptions
from glipkit.engine.training.data import build_sources, caption_sources
from glipkit.model.config import glip_tiny_test
from glipkit.model.loss import GroundingLoss


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(write_vocab(tmp_path_factory.mktemp("vocab"))))


def _losses(token_weights=None, box_weights=None):
    """Loss and head-output gradients of ROW_OF_THREE with weights on image 1's one box (image 0 unweighted)."""
    outputs, anchors, targets, mask = make_inputs(ROW_OF_THREE, [(1, 3)])
    weight = (lambda w: None if w is None else torch.tensor([w]))
    targets[1] = replace(targets[1], token_weights=weight(token_weights), box_weights=weight(box_weights))
    losses = GroundingLoss()(outputs, anchors, targets, mask)
    losses["loss"].backward()
    grads = (outputs.bbox_reg[0].grad.permute(0, 2, 3, 1).reshape(2, 3, 4), outputs.centerness[0].grad.reshape(2, 3),
             outputs.dot_product_logits[0].grad)
    return {k: v.item() for k, v in losses.items()}, grads


def test_zero_box_weight_leaves_only_the_token_loss_on_that_box():
    plain, (reg, ctr, logit) = _losses()
    off, (reg_off, ctr_off, logit_off) = _losses(box_weights=0.0)
    # Image 1's positive anchor is 2: no box-regression or centerness gradient there, image 0's unchanged.
    assert reg[1, 2].abs().sum() > 0 and ctr[1, 2] != 0
    assert (reg_off[1, 2] == 0).all() and ctr_off[1, 2] == 0
    assert torch.equal(reg_off[0], reg[0]) and torch.equal(ctr_off[0], ctr[0])
    assert torch.equal(logit_off, logit) and off["loss_dot_product_token"] == plain["loss_dot_product_token"]
    assert off["loss_reg"] < plain["loss_reg"] and off["loss_centerness"] < plain["loss_centerness"]
    # A weight of 1 is the plain loss, exactly.
    assert _losses(box_weights=1.0)[0] == plain


def test_token_weight_scales_the_token_loss_of_its_box_exactly():
    plain, _ = _losses()
    assert _losses(token_weights=1.0)[0] == plain
    zero, (_, _, grad_zero) = _losses(token_weights=0.0)
    half, _ = _losses(token_weights=0.5)
    score, (_, _, grad_score) = _losses(token_weights=0.8)
    box_part = plain["loss_dot_product_token"] - zero["loss_dot_product_token"]
    assert box_part > 1e-3
    assert half["loss_dot_product_token"] == pytest.approx(zero["loss_dot_product_token"] + 0.5 * box_part, rel=1e-6)
    assert score["loss_dot_product_token"] == pytest.approx(zero["loss_dot_product_token"] + 0.8 * box_part, rel=1e-6)
    assert (grad_zero[1, 2] == 0).all() and (grad_score[1, 2] != 0).any()  # anchor 2 of image 1 matches the box
    assert score["loss_reg"] == plain["loss_reg"] and score["loss_centerness"] == plain["loss_centerness"]


def _pseudo_tables(root):
    """One shard of 3 images; every row lists all classes as phrases (a classes prompt), boxes of 2 of them."""
    samples = make_samples(3, 5, max_size=180)
    shard = write_shard(root / "00000.tar", [(s.key, s.to_webdataset()) for s in samples])
    phrases = [{"text": name, "start": 0, "end": len(name)} for name in CATEGORIES]
    rows = [{"key": s.key, "caption": "", "phrases": phrases, "shard": str(shard), "width": s.width,
             "height": s.height, "boxes": [
                 {"x0": 2, "y0": 3, "x1": 40, "y1": 50, "score": 0.9, "phrase": 0},
                 {"x0": 50, "y0": 10, "x1": 90, "y1": 60, "score": 0.6, "phrase": 1},
                 {"x0": 5, "y0": 5, "x1": 30, "y1": 30, "score": 0.2, "phrase": 2}]} for s in samples]
    write_table(root / "00000.labels.parquet", rows, LABELS_SCHEMA, "pseudo-label", {})
    return root


def test_pseudo_recipe_weights_and_negatives_reach_the_targets(tmp_path, tokenizer):
    tables = _pseudo_tables(tmp_path)
    recipe = PseudoRecipe(box_loss_weight=0.0, score_weights=True, negatives=True)
    kept = {"circle", "square"}  # phrases 0 and 1; phrase 2 (score 0.2) falls under the min score 0.3
    source = PseudoLabelSource(tables, tokenizer, prompt="classes", filters=PseudoFilter(min_score=0.3),
                               recipe=recipe)
    plain = PseudoLabelSource(tables, tokenizer, prompt="classes", filters=PseudoFilter(min_score=0.3))
    item = next(source.stream(0, 0))
    negatives = set(CATEGORIES) - kept
    missing_plain = 0
    for seed in range(12):
        example = source.materialize(item, random.Random(seed))
        named = set(example.prompt.split(". "))
        assert negatives <= named  # every class the teacher found no box for is named, every time
        missing_plain += not negatives <= set(plain.materialize(item, random.Random(seed)).prompt.split(". "))
    assert missing_plain > 0  # without the recipe GLIP's sampled negatives often leave some out
    by_name = {example.prompt[s[0][0]:s[0][1]]: i for i, s in enumerate(example.box_spans)}
    assert set(by_name) == kept
    assert example.token_weights[by_name["circle"]] == pytest.approx(0.9)
    assert example.token_weights[by_name["square"]] == pytest.approx(0.6)
    assert example.box_weights.tolist() == [0.0, 0.0]
    assert plain.materialize(item, random.Random(0)).token_weights is None

    # Collated: the weights are the targets', and the negatives' tokens are in the text with no positive box.
    transformed = TrainTransform(glip_tiny_test().input, (64,), 128, 0.0)(example, random.Random(0))
    batch = GroundingCollator(tokenizer, 256, 32)([transformed])
    target = batch.targets[0]
    assert target.token_weights.tolist() == pytest.approx(example.token_weights.tolist())
    assert target.box_weights.tolist() == [0.0, 0.0]
    start = example.prompt.index("kite")
    kite_tokens = batch.input_ids[0].tolist().index(tokenizer.convert_tokens_to_ids("kite"))
    assert start >= 0 and batch.attention_mask[0, kite_tokens] == 1 and (target.positive_map[:, kite_tokens] == 0).all()
    moved = batch.to("cpu")
    assert torch.equal(moved.targets[0].token_weights, target.token_weights)


def _caption_example(key, caption, spans, source="grounding"):
    transform = TrainTransform(glip_tiny_test().input, (64,), 128, 0.0)
    boxes = np.tile(np.array([[1, 2, 30, 40]], np.float32), (len(spans), 1))
    return transform(GroundingExample(key, Image.new("RGB", (64, 64)), caption, boxes, spans, source),
                     random.Random(0))


def test_negative_caption_packing_within_the_token_limit(tokenizer):
    examples = [_caption_example("a", "a red circle", [[(2, 12)]]),
                _caption_example("b", "two blue stars", [[(4, 14)]]),
                _caption_example("c", "a green tree on a grassy field", [[(2, 12)]]),
                _caption_example("d", "circle", [[(0, 6)]], source="gold")]
    plain = GroundingCollator(tokenizer, 256, 32)(examples)
    packed_collator = GroundingCollator(tokenizer, 256, 32, pack_sources={"grounding"})
    packed = packed_collator.pack_negative_captions(examples)
    assert packed[0].prompt == "a red circle. two blue stars. a green tree on a grassy field"
    assert packed[1].prompt == "two blue stars. a red circle. a green tree on a grassy field"
    assert packed[3].prompt == "circle"  # not a caption source: unchanged, and never packed into the others
    batch = packed_collator(examples)
    for before, after in zip(plain.targets, batch.targets):
        width = before.positive_map.shape[1] - 1
        assert torch.equal(after.positive_map[:, :width], before.positive_map[:, :width])  # own phrases unchanged
        assert after.positive_map[:, width:].sum() == 0  # the packed captions are negatives
    assert batch.attention_mask[0].sum() == 2 + len(tokenizer.tokenize(packed[0].prompt))
    # A tight limit: "a red circle" (3 tokens) + ". two blue stars" (4) fits in 8 - 2; the long caption does not.
    tight = GroundingCollator(tokenizer, 9, 32, pack_sources={"grounding"}).pack_negative_captions(examples)
    assert tight[0].prompt == "a red circle. two blue stars"
    assert len(tokenizer.tokenize(tight[0].prompt)) <= 7


def test_recipe_options_reach_the_sources(tmp_path, tokenizer):
    tables = _pseudo_tables(tmp_path)
    options = DataOptions(pseudo=str(tables), pseudo_box_loss=0.25, pseudo_score_weights=True,
                          pseudo_negatives=True, pseudo_prompt="classes")
    source = build_sources(options, tokenizer, 0)["pseudo"]
    assert source.recipe == PseudoRecipe(0.25, True, True)
    assert caption_sources([source]) == []  # a classes prompt is not a caption: no packing
    assert DataOptions().pseudo_box_loss == 1.0 and not DataOptions().pseudo_score_weights


def test_models_average_writes_the_weight_space_average(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen), "n": torch.tensor([7])}
    b = {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(4, generator=gen), "n": torch.tensor([9])}
    save_file(a, str(tmp_path / "a.safetensors"), metadata={"glipkit_config": "{}"})
    save_file(b, str(tmp_path / "b.safetensors"))
    _register_commands()
    runner = CliRunner()
    result = runner.invoke(app, ["models", "average", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                 "--alpha", "0.5", "--out", str(tmp_path / "avg.safetensors")])
    assert result.exit_code == 0, result.output
    averaged = load_file(str(tmp_path / "avg.safetensors"))
    assert torch.allclose(averaged["w"], 0.5 * a["w"] + 0.5 * b["w"], atol=1e-7)
    assert torch.allclose(averaged["b"], 0.5 * a["b"] + 0.5 * b["b"], atol=1e-7)
    assert averaged["n"].item() == 7  # integer buffers are the first's
    result = runner.invoke(app, ["models", "average", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                 "--alpha", "0.25", "--out", str(tmp_path / "q.safetensors")])
    quarter = load_file(str(tmp_path / "q.safetensors"))
    assert torch.allclose(quarter["w"], 0.25 * a["w"] + 0.75 * b["w"], atol=1e-7)
    save_file({"w": a["w"]}, str(tmp_path / "c.safetensors"))
    result = runner.invoke(app, ["models", "average", str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors"),
                                 "--out", str(tmp_path / "bad.safetensors")])
    assert result.exit_code == 2 and "different tensors" in result.output
    assert not (tmp_path / "bad.safetensors").exists()


def test_train_student_help_documents_the_recipes():
    _register_commands()
    result = CliRunner().invoke(app, ["train-student", "--help"], env={"COLUMNS": "200"})
    for flag in ("--pseudo-box-loss", "--pseudo-score-weights", "--pseudo-negatives", "--pack-negative-captions"):
        assert flag in result.output
