"""The GLIP module as users load and call it: key accounting, checkpoints, prompts, padding, offline errors."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURES_DIR
from glipkit.engine.predictor import Predictor, PredictorSettings
from glipkit.model import weights as weights_io
from glipkit.model.config import from_official_config, glip_l, glip_t, glip_t_a, glip_tiny_test
from glipkit.model.glip import GLIP
from glipkit.model.hub import WeightsUnavailableError
from glipkit.model.prompts import build_detection_prompt, encode_prompts, split_phrases

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]


def _official_keys(name: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (FIXTURES_DIR / f"{name}_state_dict_keys.tsv").read_text().splitlines():
        if line.strip():
            key, shape, _ = line.split("\t")
            keys[key] = tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]")))
    return keys


def _glip_t_a_keys() -> dict[str, tuple[int, ...]]:
    """GLIP-T(A)'s official keys: GLIP-T's without X-MHA and BERT layers, DyConv k = 3i+2 renumbered to i (§5.1)."""
    keys = {}
    for key, shape in _official_keys("glip_t").items():
        if key.startswith("rpn.head.dyhead_tower."):
            parts = key.split(".")
            index = int(parts[3])
            if index % 3 != 2:
                continue
            parts[3] = str(index // 3)
            key = ".".join(parts)
        keys[key] = shape
    return keys


def _meta_model(config) -> GLIP:
    with torch.device("meta"):
        return GLIP(config)


@pytest.mark.parametrize(
    "config_fn, keys_fn, total",
    [(glip_t, lambda: _official_keys("glip_t"), 231_780_222),
     (glip_t_a, _glip_t_a_keys, 151_430_526),
     (glip_l, lambda: _official_keys("glip_l"), 430_422_384)],
    ids=["glip-t", "glip-t-a", "glip-l"],
)
def test_every_official_key_maps_to_a_parameter_of_the_same_shape(config_fn, keys_fn, total):
    config = config_fn()
    model = _meta_model(config)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = keys_fn()
    mapped = {}
    for key, shape in official.items():
        if weights_io.is_dropped_official_key(key):
            continue
        target = weights_io.official_to_glipkit_key(key, config.head.early_fusion)
        assert target in own, f"{key} -> {target} is not a glipkit parameter"
        assert own[target] == shape, f"{key}: official {shape} vs glipkit {own[target]}"
        mapped[target] = key
    assert set(own) == set(mapped), f"glipkit keys with no official source: {sorted(set(own) - set(mapped))[:10]}"
    assert sum(v.numel() for v in model.state_dict().values()) == total


def test_config_inferred_from_official_keys_matches_presets():
    for name, config in (("glip_t", glip_t()), ("glip_l", glip_l())):
        state = {k: torch.empty(s, device="meta") for k, s in _official_keys(name).items()}
        inferred = weights_io.infer_official_config(state)
        assert inferred.swin == config.swin
        assert inferred.head.num_layers == config.head.num_layers
        assert inferred.language.hidden_size == 768 and inferred.language.num_hidden_layers == 12


@pytest.fixture(scope="module")
def fixture_model() -> tuple[GLIP, dict]:
    config = from_official_config(json.loads((FIXTURES_DIR / "glip_small_ref_config.json").read_text()))
    return GLIP.from_pretrained(FIXTURES_DIR / "glip_small_ref.safetensors", config=config, load_tokenizer_now=False), \
        load_file(str(FIXTURES_DIR / "glip_small_ref.safetensors"))


def test_official_format_checkpoint_round_trips(fixture_model, tmp_path):
    model, official = fixture_model
    path = tmp_path / "official.pth"
    weights_io.write_official_checkpoint(official, path)  # {"model": {"module." + key: tensor}}
    reloaded = GLIP.from_pretrained(path, load_tokenizer_now=False)  # config inferred from the keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    # ...and back to official names, byte for byte.
    back = weights_io.glipkit_to_official_state_dict(reloaded.state_dict(), list(official), True)
    for key, value in back.items():
        assert torch.equal(value, official[key]), key
    # glipkit's own format keeps the config.
    saved = model.save_pretrained(tmp_path / "student.safetensors")
    again = GLIP.from_pretrained(saved, load_tokenizer_now=False)
    assert again.config == model.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_checkpoint_that_runs_code_on_load_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"backbone.body.x": _RunsCode()}}, handle)
    with pytest.raises(weights_io.CheckpointError, match="refusing to load"):
        GLIP.from_pretrained(path, load_tokenizer_now=False)
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_and_unexpected_keys_are_listed(fixture_model, tmp_path):
    _, official = fixture_model
    broken = dict(official)
    del broken["backbone.fpn.fpn_layer2.weight"]
    broken["rpn.head.something_new"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    weights_io.write_official_checkpoint(broken, path)
    with pytest.raises(weights_io.CheckpointError) as error:
        GLIP.from_pretrained(path, config=fixture_model[0].config, load_tokenizer_now=False)
    assert "rpn.head.something_new" in str(error.value)


def test_coco_detection_prompt_and_token_spans(tiny_tokenizer):
    prompt, spans = build_detection_prompt(COCO_NAMES)
    assert prompt == ". ".join(COCO_NAMES)
    assert prompt.startswith("person. bicycle. car. motorcycle.") and prompt.endswith("hair drier. toothbrush")
    assert [prompt[a:b] for a, b in spans] == COCO_NAMES
    encoded = encode_prompts(tiny_tokenizer, [prompt], [spans], pad_to_max_length=True)
    assert encoded.input_ids.shape == (1, 256)
    # Every word and every '.' is one token in the test vocabulary; [CLS] is token 0.
    expected, position = [], 1
    for name in COCO_NAMES:
        words = len(name.split())
        expected.append(list(range(position, position + words)))
        position += words + 1
    got = [torch.nonzero(row).flatten().tolist() for row in encoded.positive_maps[0]]
    assert got == expected
    assert encoded.unmapped == [[]]


def test_span_fallback_and_truncated_phrases(tiny_tokenizer):
    prompt = "a dog  . " + "red " * 300 + "cat"
    encoded = encode_prompts(tiny_tokenizer, [prompt], [[(0, 6), (2, 5), (len(prompt) - 3, len(prompt))]])
    rows = [torch.nonzero(r).flatten().tolist() for r in encoded.positive_maps[0]]
    assert rows[0] == [1, 2]  # "a dog " ends on a space: end-2 finds "dog" (§4.4 fallback)
    assert rows[1] == [2]
    assert rows[2] == [] and encoded.unmapped == [[2]]  # beyond 256 tokens: dropped, never mis-mapped


def test_split_phrases():
    text = " person. red car .. dog"
    assert [text[a:b] for a, b in split_phrases(text)] == ["person", "red car", "dog"]


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer) -> GLIP:
    torch.manual_seed(0)
    model = GLIP(glip_tiny_test(), tokenizer=tiny_tokenizer).eval()
    # The prior bias (-4.6) keeps an untrained model's scores under the 0.05 threshold; 0 gives detections.
    model.head.bias0.data.fill_(0.0)
    return model


def test_padding_text_to_256_equals_padding_to_longest(tiny_model, tiny_tokenizer):
    prompts = ["a red circle. a dog", "two cats on a table. blue sky. person"]
    spans = [split_phrases(p) for p in prompts]
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        features = tiny_model.encode_image(images)
        results = {}
        for pad in (False, True):
            enc = encode_prompts(tiny_tokenizer, prompts, spans, pad_to_max_length=pad)
            out = tiny_model.fuse_and_predict(features, tiny_model.encode_text(enc.input_ids, enc.attention_mask))
            results[pad] = (enc, out)
    short, full = results[False], results[True]
    length = short[0].input_ids.shape[1]
    assert length < 256 and full[0].input_ids.shape[1] == 256
    mask = short[0].attention_mask.bool()
    for level in range(5):
        a = short[1].dot_product_logits[level][..., :length]
        b = full[1].dot_product_logits[level][..., :length]
        assert torch.allclose(a.transpose(1, 2)[mask], b.transpose(1, 2)[mask], atol=1e-4, rtol=1e-4)
        assert torch.allclose(short[1].bbox_reg[level], full[1].bbox_reg[level], atol=1e-4, rtol=1e-4)
        assert torch.allclose(short[1].centerness[level], full[1].centerness[level], atol=1e-4, rtol=1e-4)


def test_predict_returns_boxes_in_original_pixels(tiny_model):
    image = Image.new("RGB", (300, 200), (40, 120, 200))
    predictor = Predictor(tiny_model, PredictorSettings(precision="fp32"))
    preds = predictor.predict([image, image.resize((150, 100))], prompts="a dog. a red circle", box_threshold=0.0)
    assert len(preds) == 2
    for pred, (w, h) in zip(preds, [(300, 200), (150, 100)]):
        assert pred.phrases == ["a dog", "a red circle"]
        assert len(pred) > 0
        assert pred.boxes.shape == (len(pred), 4)
        assert (pred.boxes[:, 0] >= 0).all() and (pred.boxes[:, 2] <= w).all() and (pred.boxes[:, 3] <= h).all()
        assert set(pred.labels.tolist()) <= {0, 1}


def test_predict_with_classes_chunks_and_encodes_each_image_once(tiny_model, monkeypatch):
    image = Image.new("RGB", (160, 128), (200, 30, 30))
    names = ["dog", "cat", "person", "car", "bus"]
    calls = []
    original = tiny_model.encode_image
    monkeypatch.setattr(tiny_model, "encode_image", lambda x: calls.append(x.shape) or original(x))
    predictor = Predictor(tiny_model, PredictorSettings(precision="fp32"))
    whole = predictor.predict(image, classes=names)[0]
    chunked_as_one = predictor.predict(image, classes=names, chunk_size=len(names))[0]
    chunked = predictor.predict(image, classes=names, chunk_size=2)[0]
    assert len(calls) == 3  # one image encoding per call, however many chunks
    assert torch.equal(whole.boxes, chunked_as_one.boxes) and torch.equal(whole.scores, chunked_as_one.scores)
    assert set(chunked.labels.tolist()) <= set(range(5)) and chunked.phrases == names
    assert len(chunked) > 0


def test_offline_named_model_fails_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("GLIPKIT_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsUnavailableError) as error:
        GLIP.from_pretrained("glip-t")
    message = str(error.value)
    assert "\n" not in message
    assert "glip_tiny_model_o365_goldg_cc_sbu.pth" in message and "huggingface.co/GLIPModel/GLIP" in message


def test_models_cli_offline_exit_code_and_convert(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from glipkit.cli.app import _register_commands, app

    _register_commands()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    runner = CliRunner()
    result = runner.invoke(app, ["models", "download", "glip-l"])
    assert result.exit_code == 2
    assert "glip_large_model.pth" in result.output and "Traceback" not in result.output
    out = tmp_path / "converted.safetensors"
    result = runner.invoke(app, ["models", "convert", str(FIXTURES_DIR / "glip_small_ref.safetensors"), str(out)])
    assert result.exit_code == 0, result.output
    converted = GLIP.from_pretrained(out, load_tokenizer_now=False)
    assert converted.config.head.channels == 64 and converted.config.swin.embed_dim == 32
