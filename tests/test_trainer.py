"""train-student (issue 5): a small GLIP overfits a few images, resume is exact, prompt/linear tuning touch only their
parameters, 2-process DDP on CPU follows the 1-process loss curve, a NaN loss stops cleanly, bad data is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from glipkit.demo.gold import write_coco_split
from glipkit.demo.vocab import write_vocab
from glipkit.engine.training.config import DataOptions, TrainConfig
from glipkit.engine.training.trainer import TrainingDiverged, TrainingInterrupted, train
from glipkit.engine.training.tuning import LINEAR_PROBE_PREFIXES, set_train_mode

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from more, and a second process on a shared 2-core
    machine makes OpenMP threads spin (runs here went 8x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> str:
    return str(write_vocab(tmp_path_factory.mktemp("vocab")))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """Six images of one size (so batches pad identically however they are split)."""
    return write_coco_split(tmp_path_factory.mktemp("set"), 6, seed=5, min_size=160, max_size=160, max_objects=2)


def _config(out: Path, data: Path, vocab: str, **overrides) -> TrainConfig:
    values = dict(out=str(out), model="preset:glip-tiny-test", tokenizer=vocab,
                  data=DataOptions(gold=str(data), gold_images=str(data.parent / "images"), train_min_sizes=(128,)),
                  steps=6, batch_size=2, lr=1e-3, lang_lr=1e-3, log_every=1, save_every=2, warmup_steps=2)
    values.update(overrides)
    return TrainConfig(**values)


def _app():
    from glipkit.cli.app import _register_commands, app

    _register_commands()
    return app


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_small_model_overfits_a_handful_of_images(tmp_path, vocab):
    """Through the CLI: 4 images, glip-tiny-test from scratch, evaluated on the same images at the end."""
    data = write_coco_split(tmp_path / "four", 4, seed=7, max_objects=2)
    images = str(data.parent / "images")
    result = CliRunner().invoke(_app(), [
        "train-student", "--out", str(tmp_path / "run"), "--model", "preset:glip-tiny-test", "--tokenizer", vocab,
        "--gold", str(data), "--gold-images", images, "--steps", "150", "--batch-size", "4", "--lr", "2e-3",
        "--lang-lr", "2e-3", "--schedule", "constant", "--warmup", "10", "--train-sizes", "128", "--flip-prob", "0",
        "--val", str(data), "--val-images", images, "--save-every", "0", "--log-every", "25", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    evaluation = [r for r in _metrics(tmp_path / "run") if r["event"] == "eval"][-1]
    assert evaluation["metrics"]["AP50"] >= 0.9, evaluation
    losses = [r["loss"] for r in _metrics(tmp_path / "run") if r["event"] == "step"]
    assert losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "tokenizer").is_dir()


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, small_set, vocab):
    # EMA, gradient accumulation, DropBlock (random) and a data worker all take part.
    options = dict(ema_decay=0.9, accumulate=2, workers=1)
    full = train(_config(tmp_path / "full", small_set, vocab, **options))

    def interrupt(event):
        if event.done == 3 and not event.message:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="interrupted at step 3"):
        train(_config(tmp_path / "cut", small_set, vocab, **options), progress=interrupt)
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    resumed = train(_config(tmp_path / "cut", small_set, vocab, resume="auto", **options))

    a, b = load_file(str(full.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = lambda out: {r["step"]: r["loss"] for r in _metrics(out) if r["event"] == "step"}  # noqa: E731
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")

    with pytest.raises(ValueError, match="other batch_size"):
        train(_config(tmp_path / "cut", small_set, vocab, resume="auto", batch_size=3, **options))


@pytest.mark.parametrize("mode", ["prompt", "linear"])
def test_tuning_modes_change_only_their_parameters(tmp_path, small_set, vocab, mode):
    from glipkit.model.config import glip_tiny_test
    from glipkit.model.glip import GLIP
    from glipkit.model.hub import load_tokenizer

    torch.manual_seed(1)
    start = GLIP(glip_tiny_test(), load_tokenizer(vocab))
    start.save_pretrained(tmp_path / "start.safetensors")
    before = {k: v.clone() for k, v in start.state_dict().items()}
    result = train(_config(tmp_path / mode, small_set, vocab, model=str(tmp_path / "start.safetensors"), tune=mode,
                           steps=3, lr=0.05, save_every=0))
    after = load_file(str(result.weights))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    if mode == "prompt":
        assert changed == [] and set(after) - set(before) == {"prompt_tuning.weight"}
        offsets = after["prompt_tuning.weight"]
        assert offsets.shape == (1000, 32) and offsets[:8].abs().sum() > 0
        assert offsets[256:].abs().sum() == 0  # §9: only the first L rows are ever used
    else:
        assert changed and all(k.startswith(LINEAR_PROBE_PREFIXES) for k in changed), changed
        assert {k.split(".")[1] for k in changed} >= {"bbox_pred", "centerness", "token_projection"}
        assert not any(k.startswith("head.scales") or k.startswith("head.cls_logits") for k in changed)


def test_train_modes_of_frozen_parts():
    from glipkit.model.config import glip_tiny_test
    from glipkit.model.glip import GLIP

    model = GLIP(glip_tiny_test())
    set_train_mode(model, "prompt")
    assert model.training and not any(m.training for m in model.head.modules())
    assert not model.backbone.training and not model.language_backbone.training
    set_train_mode(model, "linear")
    assert model.head.training and not model.fpn.training


def test_two_process_ddp_follows_the_single_process_loss_curve(tmp_path, small_set, vocab):
    """Same global batch (1 x 4 vs 2 x 2), same samples; gloo on CPU through torchrun."""
    common = ["--model", "preset:glip-tiny-test", "--tokenizer", vocab, "--gold", str(small_set),
              "--gold-images", str(small_set.parent / "images"), "--steps", "4", "--lr", "1e-3", "--lang-lr", "1e-3",
              "--warmup", "1", "--train-sizes", "128", "--log-every", "1", "--save-every", "0", "--no-progress",
              "--model-option", "head.fpn_drop_block=false", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    single = CliRunner().invoke(_app(), ["train-student", "--out", str(tmp_path / "one"), "--batch-size", "4", *common])
    assert single.exit_code == 0, single.output
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "glipkit", "train-student", "--out", str(tmp_path / "two"), "--batch-size", "2",
                             *common], env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one = [r for r in _metrics(tmp_path / "one") if r["event"] == "step"]
    two = [r for r in _metrics(tmp_path / "two") if r["event"] == "step"]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    start = [r for r in _metrics(tmp_path / "two") if r["event"] == "start"][0]
    assert start["world_size"] == 2
    for a, b in zip(one, two):
        for key in ("loss", "loss_reg", "loss_centerness", "loss_dot_product_token"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert one[-1]["loss"] != pytest.approx(one[0]["loss"], rel=1e-3)  # it did train
    w1, w2 = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for key in w1:
        assert torch.allclose(w1[key], w2[key], rtol=1e-3, atol=1e-5), key


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_set, vocab, monkeypatch):
    import glipkit.engine.training.trainer as trainer_module
    from glipkit.model.loss import GroundingLoss

    class NanAtThirdStep(GroundingLoss):
        calls = 0

        def forward(self, *args, **kwargs):
            losses = super().forward(*args, **kwargs)
            NanAtThirdStep.calls += 1
            if NanAtThirdStep.calls == 3:
                losses["loss_reg"] = losses["loss_reg"] * float("nan")
                losses["loss"] = losses["loss"] + losses["loss_reg"]
            return losses

    monkeypatch.setattr(trainer_module, "GroundingLoss", NanAtThirdStep)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"step 3 .*loss_reg=nan.*step-0000002"):
        train(_config(out, small_set, vocab, save_every=1))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert not (out / "checkpoints" / "step-0000003").exists()
    weights = load_file(str(out / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_bad_images_and_boxes_are_skipped_and_counted(tmp_path, vocab):
    data = write_coco_split(tmp_path / "bad", 4, seed=9, max_objects=2)
    coco = json.loads(data.read_text())
    (data.parent / "images" / coco["images"][0]["file_name"]).write_bytes(b"\x89PNG broken")
    coco["annotations"][-1]["bbox"] = [-20.0, -20.0, 60.0, 60.0]  # partly outside its image
    data.write_text(json.dumps(coco))
    result = train(_config(tmp_path / "run", data, vocab, steps=4, save_every=0))
    assert result.events["skipped: undecodable image"] == 2  # 8 samples = 2 epochs over 4 images
    assert result.events["box clipped to image"] == 2
    assert (tmp_path / "run" / "skipped.jsonl").read_text().count("undecodable image") == 2


def test_optimizer_groups_and_schedule_follow_glip():
    """§8.6: language backbone at --lang-lr, any "bias" name at 2x LR without weight decay; warmup then decay."""
    from glipkit.engine.training.optimization import OptimizerSettings, ScheduleSettings, lr_factor, parameter_groups
    from glipkit.model.config import glip_tiny_test
    from glipkit.model.glip import GLIP

    model = GLIP(glip_tiny_test())
    groups = {g["name"]: g for g in parameter_groups(model, OptimizerSettings(lr=1e-3, lang_lr=1e-4,
                                                                                weight_decay=0.05))}
    assert len(groups) == sum(1 for p in model.parameters())
    plain = next(n for n in groups if n.startswith("backbone.") and n.endswith(".weight"))
    assert (groups[plain]["lr"], groups[plain]["weight_decay"]) == (1e-3, 0.05)
    table = next(n for n in groups if "relative_position_bias_table" in n)
    for name in (table, "head.bias0", "head.bias_lang", "head.bbox_pred.bias"):
        assert (groups[name]["lr"], groups[name]["weight_decay"]) == (2e-3, 0.0), name
    lang_weight = "language_backbone.bert.embeddings.word_embeddings.weight"
    assert (groups[lang_weight]["lr"], groups[lang_weight]["weight_decay"]) == (1e-4, 0.05)
    lang_bias = next(n for n in groups if n.startswith("language_backbone.") and n.endswith(".bias"))
    assert groups[lang_bias]["lr"] == pytest.approx(2e-4)

    step = ScheduleSettings(total_steps=100, kind="step", warmup_steps=10, warmup_factor=0.001)
    assert lr_factor(0, step) == pytest.approx(0.001)
    assert lr_factor(5, step) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [lr_factor(s, step) for s in (10, 66, 67, 88, 89, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = ScheduleSettings(total_steps=110, kind="cosine", warmup_steps=10)
    assert [lr_factor(s, cosine) for s in (10, 60, 110)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-9)


def test_fusion_checkpointing_gives_the_same_gradients(vocab):
    """Activation checkpointing of the X-MHA fusion (cfg.head.use_checkpoint) recomputes, it does not change numbers."""
    from glipkit.engine.training.tuning import enable_fusion_checkpointing
    from glipkit.model.config import glip_tiny_test
    from glipkit.model.glip import GLIP
    from glipkit.model.hub import load_tokenizer
    from glipkit.model.loss import GroundingLoss, GroundingTargets
    from glipkit.model.prompts import encode_prompts

    tokenizer = load_tokenizer(vocab)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 128)
    encoded = encode_prompts(tokenizer, ["a red circle. square"] * 2, [[(0, 12), (14, 20)]] * 2)
    targets = [GroundingTargets(torch.tensor([[10.0, 12, 50, 60], [60, 20, 100, 70]]), encoded.positive_maps[0])] * 2
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(1)
        model = GLIP(glip_tiny_test(), tokenizer).train()
        model.fpn.drop_block = None
        if checkpointed:
            enable_fusion_checkpointing(model)
        outputs = model(images, encoded.input_ids, encoded.attention_mask)
        loss = GroundingLoss()(outputs, model.anchors(outputs.tower_features), targets, encoded.attention_mask)
        loss["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name
