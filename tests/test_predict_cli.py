"""`glipkit predict` end to end: the one runtime builds the model, the one predictor grounds, the one decoder reads."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from glipkit.cli.app import _register_commands, app
from glipkit.engine.predict import read_image_file
from glipkit.engine.predictor import Predictor, PredictorSettings
from glipkit.engine.runtime import load_model

MODEL = "preset:glip-tiny-test"


@pytest.fixture(scope="module")
def checkpoint(confident_checkpoint):
    """A tiny GLIP saved as a glipkit .safetensors; prior bias 0 so that its random scores pass the 0.05 cut."""
    return confident_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    colour = root / "colour.png"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(colour)
    deep = root / "deep.png"  # 16-bit grey: must be scaled to 8 bits, not clipped at 255
    Image.fromarray(np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (64, 1))).save(deep)
    return colour, deep


def _printed_rows(output: str) -> list[list[float]]:
    """(score, x0, y0, x1, y1) of every table row the command printed."""
    rows = []
    for line in output.splitlines():
        numbers = re.findall(r"-?\d+\.\d+", line)
        if len(numbers) == 5:
            rows.append([float(n) for n in numbers])
    return rows


def test_predict_prints_the_predictors_boxes_and_draws_them(images, checkpoint, tiny_tokenizer_dir, tmp_path):
    colour, deep = images
    _register_commands()
    draw = tmp_path / "drawn"
    result = CliRunner().invoke(app, ["predict", str(colour), str(deep), "--prompt", "a red circle. a dog",
                                      "--model", str(checkpoint), "--tokenizer", str(tiny_tokenizer_dir),
                                      "--device", "cpu", "--box-threshold", "0.0", "--draw", str(draw)])
    assert result.exit_code == 0, result.output
    model = load_model(checkpoint, str(tiny_tokenizer_dir), "cpu")
    predictor = Predictor(model, PredictorSettings(precision="fp32"))
    expected = []
    for path in (colour, deep):
        [prediction] = predictor.predict(read_image_file(path), prompts="a red circle. a dog")
        assert prediction.phrases == ["a red circle", "a dog"]
        for box, score in zip(prediction.boxes.tolist(), prediction.scores.tolist()):
            expected.append([round(score, 3)] + [round(v, 1) for v in box])
    printed = _printed_rows(result.output)
    assert len(printed) == len(expected) > 0
    np.testing.assert_allclose(printed, expected, atol=0.051)
    for path in (colour, deep):
        with Image.open(draw / f"{path.stem}_glip.jpg") as drawn:
            assert drawn.size == Image.open(path).size


def test_predict_reads_16_bit_images_like_the_shard_decoder(images):
    _, deep = images
    pixels = np.asarray(read_image_file(deep))
    assert pixels.shape == (64, 80, 3)
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255  # scaled: v/257, not clipped at 255
    assert 100 < pixels[0, 40, 0] < 160


def test_a_bad_image_is_one_line_and_exit_1_and_the_others_are_still_predicted(images, checkpoint,
                                                                                tiny_tokenizer_dir, tmp_path):
    colour, _ = images
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    _register_commands()
    result = CliRunner().invoke(app, ["predict", str(bad), str(colour), "--prompt", "a dog", "--model",
                                      str(checkpoint), "--tokenizer", str(tiny_tokenizer_dir), "--device", "cpu",
                                      "--box-threshold", "0.0", "--json"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    [error] = [line for line in result.stderr.splitlines() if line.strip()]
    assert error.startswith(f"error: cannot read image {bad}: not a decodable image: ")
    [line] = [line for line in result.stdout.splitlines() if line.strip()]
    assert json.loads(line)["image"] == str(colour) and json.loads(line)["boxes"]


def test_preset_models_are_the_same_in_every_command(tiny_tokenizer_dir):
    first = load_model(MODEL, str(tiny_tokenizer_dir), "cpu")
    second = load_model(MODEL, str(tiny_tokenizer_dir), "cpu")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
