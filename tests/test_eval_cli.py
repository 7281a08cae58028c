"""`glipkit eval`: prompts from annotation files, the chunked loop, and every benchmark's CLI on tiny generated sets."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from glipkit.engine.evaluation.jobs import run_flickr
from glipkit.engine.evaluation.loop import Caption, ImageRecord, RunSettings, detect_images, image_records
from glipkit.evaluation.odinw import ODINW_13, select_datasets
from glipkit.model.config import glip_tiny_test
from glipkit.model.glip import GLIP
from glipkit.model.prompts import encode_prompts
from glipkit.model.transforms import batch_images, preprocess_image
from glipkit.text.prompt_file import parse_prompts
from glipkit.text.vocabulary import class_vocabulary
from test_model_api import COCO_NAMES

# The official COCO category ids (1..90 with gaps), in the order of COCO_NAMES.
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]

# A small COCO-style set: non-contiguous ids, names that GLIP's clean_name changes (§4.3 step 2).
CATEGORIES = [{"id": 3, "name": "dog"}, {"id": 7, "name": "traffic_light"}, {"id": 11, "name": "car_(automobile)"},
              {"id": 12, "name": "person"}, {"id": 20, "name": "bus"}]
CLEAN_NAMES = ["dog", "traffic light", "car ", "person", "bus"]  # "car_(automobile)" -> "car " (kept, as official)
IMAGE_SIZES = [(160, 120), (96, 128), (140, 140), (200, 100)]  # (w, h)
# A printed metric row of a rich table: first cell the metric's name, last cell its value.
METRIC_ROW = r"│\s*(AP\w*|AR\w*)\s*│.*?│\s*(-?[0-9.]+|n/a)\s*│\s*$"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model(tiny_tokenizer) -> GLIP:
    torch.manual_seed(0)
    glip = GLIP(glip_tiny_test(), tokenizer=tiny_tokenizer).eval()
    glip.head.bias0.data.fill_(0.0)  # an untrained model's prior keeps every score under 0.05; 0 gives detections
    return glip


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _draw_images(directory: Path, sizes=IMAGE_SIZES, seed: int = 0) -> list[dict]:
    """Images with a few coloured rectangles; returns (file_name, w, h, boxes xywh) per image."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (w, h) in enumerate(sizes):
        image = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(image)
        boxes = []
        for _ in range(2):
            bw, bh = rng.randint(20, w // 2), rng.randint(20, h // 2)
            x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=(rng.randrange(256), 30, 200))
            boxes.append([float(x), float(y), float(bw), float(bh)])
        name = f"img_{i}.png"
        image.save(directory / name)
        out.append({"file_name": name, "width": w, "height": h, "boxes": boxes})
    return out


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> tuple[Path, Path]:
    """(annotation json, image dir) of a generated COCO-style set: 4 images, 5 categories, 8 boxes."""
    root = tmp_path_factory.mktemp("coco")
    drawn = _draw_images(root / "images")
    images, annotations = [], []
    for i, d in enumerate(drawn):
        images.append({"id": 100 + i, "file_name": d["file_name"], "width": d["width"], "height": d["height"]})
        for j, box in enumerate(d["boxes"]):
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i,
                                "category_id": CATEGORIES[(i + j) % len(CATEGORIES)]["id"], "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann, root / "images"


def _cli(args: list[str]):
    from glipkit.cli.app import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def _model_args(checkpoint: Path, tokenizer_dir: Path) -> list[str]:
    return ["--model", str(checkpoint), "--tokenizer", str(tokenizer_dir), "--device", "cpu", "--workers", "0"]


def _pycocotools(gt: dict, dets: list[dict]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(json.loads(json.dumps(dets))), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


# ------------------------------------------------------------------------------------------------ prompts


def test_coco_vocabulary_from_the_annotation_categories():
    # Categories as instances_val2017.json lists them, shuffled: the prompt follows the ids (§4.3 step 1).
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_IDS, COCO_NAMES)]
    random.Random(1).shuffle(categories)
    vocabulary = class_vocabulary(categories)
    text, spans = vocabulary.prompt()
    assert text == ". ".join(COCO_NAMES)  # the token spans of this string are checked in test_model_api
    assert text.startswith("person. bicycle. car.") and text.endswith("hair drier. toothbrush")
    assert [text[a:b] for a, b in spans] == COCO_NAMES
    assert list(vocabulary.category_ids) == COCO_IDS  # contiguous label i <-> json id
    assert vocabulary.category_ids[COCO_NAMES.index("toothbrush")] == 90


def test_clean_names_and_chunks(tiny_tokenizer):
    vocabulary = class_vocabulary(CATEGORIES)
    assert list(vocabulary.names) == CLEAN_NAMES
    assert vocabulary.prompt()[0] == "dog. traffic light. car . person. bus"
    chunks = vocabulary.chunks(tiny_tokenizer, 2)
    assert [(c.text, c.offset) for c in chunks] == [("dog. traffic light", 0), ("car . person", 2), ("bus", 4)]
    assert [[c.text[a:b] for a, b in c.spans] for c in chunks] == [["dog", "traffic light"], ["car ", "person"], ["bus"]]


def test_prompt_file_only_the_name_is_positive_and_no_trailing_separator(tiny_tokenizer):
    table = parse_prompts({"dog": {"prefix": "a big ", "suffix": " with a ball"}, "bus": "red bus",
                           "traffic_light": {"name": "traffic_light"}}, "prompts.json")
    vocabulary = class_vocabulary(CATEGORIES, table)
    text, spans = vocabulary.prompt()
    # Separators only between classes, also after a suffix; table text as written (not cleaned), others cleaned.
    assert text == "a big dog with a ball. traffic_light. car . person. red bus"
    assert [text[a:b] for a, b in spans] == ["dog", "traffic_light", "car ", "person", "red bus"]
    encoded = encode_prompts(tiny_tokenizer, [text], [spans])
    tokens = tiny_tokenizer.convert_ids_to_tokens(encoded.input_ids[0])
    rows = [[tokens[t] for t in torch.nonzero(r).flatten().tolist()] for r in encoded.positive_maps[0]]
    assert rows[0] == ["dog"] and rows[4] == ["red", "bus"]  # prefix and suffix words are not positive
    assert rows[2] == ["car"]  # the trailing space of "car " falls back to the previous character (§4.4)
    with pytest.raises(ValueError, match="prompts.json"):
        class_vocabulary(CATEGORIES, parse_prompts({"cat": "kitten"}, "prompts.json"))


def test_phrase_positive_map_is_the_union_of_a_phrases_spans(model):
    caption = Caption(0, "a dog and a cat near the dog", (((2, 5), (25, 28)), ((12, 15),)))
    encoded = encode_prompts(model.tokenizer, [caption.text], [caption.phrases])
    tokens = model.tokenizer.convert_ids_to_tokens(encoded.input_ids[0])
    rows = [torch.nonzero(r).flatten().tolist() for r in encoded.positive_maps[0]]
    assert [[tokens[t] for t in r] for r in rows] == [["dog", "dog"], ["cat"]]
    assert rows[0][1] == len(tokens) - 2  # the second "dog", just before [SEP]


# ------------------------------------------------------------------------------------------- the loop


def _reference_detections(model, image: Image.Image, prompts: list[tuple[str, int]]):
    """Each prompt chunk as its own full forward pass (the official chunked evaluation, §7.5), boxes rescaled."""
    pixels, sizes = batch_images([preprocess_image(image, model.config.input)], 32)
    boxes, scores, labels = [], [], []
    with torch.no_grad():
        features = model.encode_image(pixels)
        for text, offset in prompts:
            names = text.split(". ")
            spans, position = [], 0
            for name in names:
                spans.append((position, position + len(name)))
                position += len(name) + 2
            enc = encode_prompts(model.tokenizer, [text], [spans])
            outputs = model(pixels, enc.input_ids, enc.attention_mask)
            [det] = model.detect(outputs, features, enc.positive_maps, sizes)
            h, w = sizes[0]
            boxes.append(det.boxes * torch.tensor([image.width / w, image.height / h] * 2))
            scores.append(det.scores)
            labels.append(det.labels + offset)
    return torch.cat(boxes), torch.cat(scores), torch.cat(labels)


def test_chunked_loop_equals_independent_passes_and_encodes_each_image_once(model, coco_set, monkeypatch):
    ann, image_dir = coco_set
    data = json.loads(ann.read_text())
    records = image_records(data["images"], image_dir, max_images=3)
    vocabulary = class_vocabulary(CATEGORIES)
    images = [Image.open(r.path).convert("RGB") for r in records]
    expected = {
        None: [_reference_detections(model, im, [("dog. traffic light. car . person. bus", 0)]) for im in images],
        2: [_reference_detections(model, im, [("dog. traffic light", 0), ("car . person", 2), ("bus", 4)])
            for im in images],
    }
    calls = []
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(tuple(x.shape)) or original(x))
    for chunk_size, reference in expected.items():
        calls.clear()
        got = []
        stats = detect_images(model, records, vocabulary, RunSettings(chunk_size=chunk_size), got.append)
        assert len(calls) == len(records)  # Swin + FPN once per image, however many chunks
        assert stats.chunk_size == (5 if chunk_size is None else 2) and not stats.failed
        assert [g.record for g in got] == records
        for g, (boxes, scores, labels) in zip(got, reference):
            assert len(g.scores) > 0
            torch.testing.assert_close(g.boxes, boxes, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(g.scores, scores, atol=1e-6, rtol=1e-5)
            assert torch.equal(g.labels, labels)
    calls.clear()
    detect_images(model, records, vocabulary, RunSettings(chunk_size=2, batch_size=2), lambda r: None)
    assert [c[0] for c in calls] == [2, 1]  # two padded batches, each encoded once for 3 chunks


def test_unreadable_image_is_skipped_and_reported(model, tmp_path):
    drawn = _draw_images(tmp_path, sizes=[(64, 64), (80, 64)])
    (tmp_path / drawn[1]["file_name"]).write_bytes(b"not an image")
    records = [ImageRecord(i, tmp_path / d["file_name"]) for i, d in enumerate(drawn)]
    got = []
    stats = detect_images(model, records, class_vocabulary(CATEGORIES), RunSettings(), got.append)
    assert [g.record.image_id for g in got] == [0]
    assert stats.num_images == 1 and [f["image_id"] for f in stats.failed] == [1]
    assert "img_1.png" in stats.failed[0]["reason"]


def test_a_run_that_stops_keeps_the_detections_made_so_far(model, coco_set, tmp_path, monkeypatch):
    from glipkit.engine.evaluation.jobs import run_coco

    ann, image_dir = coco_set
    original = model.ground_chunks
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "ground_chunks", failing)
    with pytest.raises(KeyboardInterrupt):
        run_coco(model, ann, image_dir, RunSettings(), out_dir=tmp_path)
    partial = json.loads((tmp_path / "detections.partial.json").read_text())
    assert {d["image_id"] for d in partial} == {100, 101} and not (tmp_path / "metrics.json").exists()


# --------------------------------------------------------------------------------------------- COCO CLI


def test_eval_coco_cli_end_to_end(checkpoint, tiny_tokenizer_dir, coco_set, tmp_path):
    ann, image_dir = coco_set
    out = tmp_path / "out"
    result = _cli(["eval", "coco", "--ann", str(ann), "--images", str(image_dir), "--out", str(out),
                   *_model_args(checkpoint, tiny_tokenizer_dir)[:-1], "1"])  # one image-reading worker process
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["metrics"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl",
                                        "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert all(-1 <= v <= 1 for v in metrics["metrics"].values())
    assert metrics["prompts"] == ["dog. traffic light. car . person. bus"] and metrics["num_images"] == 4
    assert metrics["settings"]["batch_size"] == 1 and metrics["model"] == str(checkpoint)
    assert set(metrics["per_category_ap"]) == {"3", "7", "11", "12", "20"}
    gt = json.loads(ann.read_text())
    dets = json.loads((out / "detections.json").read_text())
    assert 0 < len(dets) <= 4 * 100
    assert {d["category_id"] for d in dets} <= {3, 7, 11, 12, 20}
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for d in dets:
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        assert w >= 1 and h >= 1  # +1 export of boxes clipped to [0, w-1] in the network frame (§7.4)
        assert x >= 0 and y >= 0 and x + w <= width + 2 and y + h <= height + 2
    direct = _pycocotools(gt, dets)  # the written file loads in pycocotools and scores the same
    assert metrics["metrics"]["AP"] == pytest.approx(direct.stats[0], abs=1e-12)
    assert re.search(rf"\bAP\b.*0\.50:0\.95.*\ball\b.*100\s.*{direct.stats[0]:.3f}", result.stdout)
    assert "AP per category" in result.stdout and "traffic_light" in result.stdout

    # Quick approximate run: 2 images in one padded batch, prompt-engineered.
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"dog": {"prefix": "a ", "suffix": " on the grass"}}))
    out2 = tmp_path / "out2"
    result = _cli(["eval", "coco", "--ann", str(ann), "--images", str(image_dir), "--out", str(out2),
                   "--max-images", "2", "--batch-size", "2", "--prompt-file", str(prompts),
                   *_model_args(checkpoint, tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["prompts"] == ["a dog on the grass. traffic light. car . person. bus"]
    assert {d["image_id"] for d in json.loads((out2 / "detections.json").read_text())} <= {100, 101}
    assert any("approximate" in w for w in metrics["warnings"]) and "approximate" in result.output


def test_eval_coco_detections_file_printed_ap_equals_pycocotools(coco_set, tmp_path):
    ann, _ = coco_set
    gt = json.loads(ann.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                     "score": float(rng.random())})
        dets.append({"image_id": a["image_id"], "category_id": 3, "bbox": [0, 0, 30, 30], "score": float(rng.random())})
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    result = _cli(["eval", "coco", "--ann", str(ann), "--detections", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    direct = _pycocotools(gt, dets)
    assert 0.05 < direct.stats[0] < 0.95
    printed = re.findall(METRIC_ROW, result.stdout, flags=re.M)
    assert [name for name, _ in printed] == ["AP", "AP50", "AP75", "APs", "APm", "APl",
                                             "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    for (_, value), stat in zip(printed, direct.stats):
        assert value == (f"{stat:.3f}" if stat >= 0 else "n/a")
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [metrics["metrics"][n] for n, _ in printed] == pytest.approx(list(direct.stats), abs=1e-12)

    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = _cli(["eval", "coco", "--ann", str(ann), "--detections", str(empty)])
    assert result.exit_code == 0, result.output
    assert "no detections" in result.output and "0.000" in result.stdout


def test_eval_coco_user_errors_are_one_line(checkpoint, tiny_tokenizer_dir, coco_set, tmp_path):
    ann, image_dir = coco_set
    cases = [
        ["--ann", str(ann)],  # neither --images nor --detections
        ["--ann", str(ann), "--images", str(tmp_path / "nowhere"), *_model_args(checkpoint, tiny_tokenizer_dir)],
        ["--ann", str(tmp_path / "missing.json"), "--detections", str(ann)],
        ["--ann", str(ann), "--images", str(image_dir), "--precision", "fp8",
         *_model_args(checkpoint, tiny_tokenizer_dir)],
    ]
    bad_prompts = tmp_path / "p.json"
    bad_prompts.write_text(json.dumps({"unicorn": "horse"}))
    cases.append(["--ann", str(ann), "--images", str(image_dir), "--prompt-file", str(bad_prompts),
                  *_model_args(checkpoint, tiny_tokenizer_dir)])
    for args in cases:
        result = _cli(["eval", "coco", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    assert "unicorn" in result.output


def test_eval_coco_with_a_random_preset_model(tiny_tokenizer_dir, coco_set, tmp_path):
    ann, image_dir = coco_set
    result = _cli(["eval", "coco", "--ann", str(ann), "--images", str(image_dir), "--model", "preset:glip-tiny-test",
                   "--tokenizer", str(tiny_tokenizer_dir), "--device", "cpu", "--workers", "0", "--max-images", "1",
                   "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and len(metrics["metrics"]) == 12


# --------------------------------------------------------------------------------------------- LVIS CLI


def test_eval_lvis_cli_fixed_ap_without_plus_one(checkpoint, tiny_tokenizer_dir, coco_set, tmp_path):
    ann, image_dir = coco_set
    coco = json.loads(ann.read_text())
    # LVIS form of the same set: coco_url instead of file_name, federated fields, frequencies.
    images = [{"id": im["id"], "width": im["width"], "height": im["height"],
               "coco_url": f"http://images.cocodataset.org/val2017/{im['file_name']}",
               "neg_category_ids": [20], "not_exhaustive_category_ids": []} for im in coco["images"]]
    categories = [dict(c, frequency=f) for c, f in zip(CATEGORIES, "rcfcr")]
    lvis_ann = tmp_path / "lvis.json"
    lvis_ann.write_text(json.dumps({"images": images, "annotations": coco["annotations"], "categories": categories}))
    out = tmp_path / "lvis"
    # --chunk-size 5 and 100 per image: the same single prompt and cap as the COCO run, so the same boxes.
    result = _cli(["eval", "lvis", "--ann", str(lvis_ann), "--images", str(image_dir), "--out", str(out),
                   "--chunk-size", "5", "--detections-per-image", "100", *_model_args(checkpoint, tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["metrics"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                                        "AR", "ARs", "ARm", "ARl"]
    assert metrics["settings"]["chunk_size"] == 5 and "fixed AP" in metrics["protocol"]
    assert "APr" in result.stdout
    lvis_dets = json.loads((out / "detections.json").read_text())
    coco_out = tmp_path / "coco"
    assert _cli(["eval", "coco", "--ann", str(ann), "--images", str(image_dir), "--out", str(coco_out),
                 *_model_args(checkpoint, tiny_tokenizer_dir)]).exit_code == 0
    coco_dets = json.loads((coco_out / "detections.json").read_text())
    assert len(lvis_dets) == len(coco_dets) > 0

    def key(d):
        return d["image_id"], d["category_id"], round(d["score"], 6), round(d["bbox"][0], 3), round(d["bbox"][1], 3)

    by_key = {key(d): d for d in coco_dets}
    for d in lvis_dets:  # §7.4: LVIS widths are x2 - x1, COCO's x2 - x1 + 1
        c = by_key[key(d)]
        assert d["bbox"][2] == pytest.approx(c["bbox"][2] - 1, abs=1e-4)
        assert d["bbox"][3] == pytest.approx(c["bbox"][3] - 1, abs=1e-4)

    # Defaults (40 per chunk, 300 per image and chunk), a subset of the images, and the --detections path.
    result = _cli(["eval", "lvis", "--ann", str(lvis_ann), "--images", str(image_dir), "--max-images", "2",
                   "--out", str(tmp_path / "lvis2"), *_model_args(checkpoint, tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    metrics2 = json.loads((tmp_path / "lvis2" / "metrics.json").read_text())
    assert metrics2["num_images"] == 2 and metrics2["settings"]["detections_per_image"] == 300
    # Scoring a detections file: what is printed and written is evaluate_lvis_fixed_ap's answer.
    from glipkit.evaluation.lvis import evaluate_lvis_fixed_ap

    rng = np.random.default_rng(1)
    hand = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
             "bbox": list(np.asarray(a["bbox"]) + rng.normal(0, 2, 4))} for a in coco["annotations"]]
    hand += [{"image_id": 100, "category_id": 20, "bbox": [5, 5, 20, 20], "score": 0.9}]  # on a negative image
    hand_path = tmp_path / "hand.json"
    hand_path.write_text(json.dumps(hand))
    result = _cli(["eval", "lvis", "--ann", str(lvis_ann), "--detections", str(hand_path),
                   "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    expected = evaluate_lvis_fixed_ap(lvis_ann, hand).metrics
    assert 0.1 < expected["AP"] < 1
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["metrics"] == expected
    printed = dict(re.findall(METRIC_ROW, result.stdout, flags=re.M))
    assert printed == {k: (f"{v:.3f}" if v >= 0 else "n/a") for k, v in expected.items()}


# ------------------------------------------------------------------------------------------- Flickr CLI


def _flickr_annotations(drawn: list[dict], boxes_for=None) -> dict:
    """MDETR final_flickr_separateGT style: two captions per image; one phrase has two spans."""
    captions = ["a dog and a red car", "a person near a bus and the dog"]
    images, annotations = [], []
    for i, d in enumerate(drawn):
        for k, caption in enumerate(captions):
            words = caption.split()
            if k == 0:
                phrases = [[[0, 5]], [[10, 19]]]  # "a dog", "a red car"
            else:
                phrases = [[[0, 8]], [[14, 19]], [[24, 31], [0, 1]]]  # "a person", "a bus", "the dog" + "a"
            rec_id = len(images)
            images.append({"id": rec_id, "file_name": d["file_name"], "width": d["width"], "height": d["height"],
                           "caption": caption, "sentence_id": k, "original_img_id": i,
                           "tokens_positive_eval": phrases})
            assert words
            for j, spans in enumerate(phrases):
                box = boxes_for(rec_id, j) if boxes_for else d["boxes"][j % len(d["boxes"])]
                annotations.append({"id": len(annotations), "image_id": rec_id, "category_id": 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0, "tokens_positive": spans})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}


def test_eval_flickr30k_cli_and_known_answer(model, checkpoint, tiny_tokenizer_dir, tmp_path, monkeypatch):
    drawn = _draw_images(tmp_path / "flickr30k-images", sizes=[(150, 110), (120, 160)], seed=3)
    ann = tmp_path / "final_flickr_separateGT_test.json"
    ann.write_text(json.dumps(_flickr_annotations(drawn)))
    out = tmp_path / "out"
    result = _cli(["eval", "flickr30k", "--ann", str(ann), "--images", str(tmp_path / "flickr30k-images"),
                   "--out", str(out), *_model_args(checkpoint, tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["metrics"]) == ["R@1", "R@5", "R@10"] and metrics["num_phrases"] == 2 * (2 + 3)
    assert metrics["metrics"]["R@1"] <= metrics["metrics"]["R@5"] <= metrics["metrics"]["R@10"] <= 1
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 4
    assert [p["phrase"] for p in predictions[1]["phrases"]] == ["a person", "a bus", "the dog"]
    assert all(len(p["boxes"]) <= 10 for rec in predictions for p in rec["phrases"])
    assert "R@1" in result.stdout

    # Known answer: ground truth = the model's own best box of each phrase (when it has area) gives R@1 = 1.
    best = {}
    for rec in predictions:
        for j, p in enumerate(rec["phrases"]):
            if p["boxes"]:
                x0, y0, x1, y1 = p["boxes"][0]
                if x1 - x0 > 0.5 and y1 - y0 > 0.5:
                    best[(rec["image_id"], j)] = [x0, y0, x1 - x0, y1 - y0]
    assert len(best) >= 6
    data = _flickr_annotations(drawn, boxes_for=lambda r, j: best.get((r, j), [0, 0, 1, 1]))
    data["annotations"] = [a for a in data["annotations"]
                           if (a["image_id"], _phrase_index(data, a)) in best]
    ann2 = tmp_path / "known.json"
    ann2.write_text(json.dumps(data))
    calls = []
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: calls.append(1) or original(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # phrases whose best box had no area have no ground truth now
        run = run_flickr(model, ann2, tmp_path / "flickr30k-images", RunSettings())
    assert len(calls) == 2  # two images, four captions: one image encoding per image
    assert run.metrics["R@1"] == 1.0 and run.result.num_phrases == len(best)


def _phrase_index(data: dict, ann: dict) -> int:
    image = next(im for im in data["images"] if im["id"] == ann["image_id"])
    return image["tokens_positive_eval"].index(ann["tokens_positive"])


# -------------------------------------------------------------------------------------------- ODinW CLI


def test_eval_odinw_cli_on_a_fake_root(checkpoint, tiny_tokenizer_dir, tmp_path):
    root = tmp_path / "DATASET"
    pothole, raccoon = select_datasets(["pothole", "Raccoon"])
    for spec, names in ((pothole, ["potholes"]), (raccoon, ["raccoon", "raccoon-face"])):
        drawn = _draw_images(root / spec.img_dir, sizes=[(100, 80), (90, 120)], seed=len(names))
        images, anns = [], []
        for i, d in enumerate(drawn):
            images.append({"id": i, "file_name": d["file_name"], "width": d["width"], "height": d["height"]})
            for j, box in enumerate(d["boxes"]):
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + j % len(names), "bbox": box,
                             "area": box[2] * box[3], "iscrowd": 0})
        (root / spec.ann_file).write_text(json.dumps({
            "images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}))
    out = tmp_path / "out"
    result = _cli(["eval", "odinw", "--root", str(root), "--datasets", "pothole,Raccoon", "--out", str(out),
                   *_model_args(checkpoint, tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["AP"]) == ["pothole", "Raccoon"]
    defined = [v for v in summary["AP"].values() if v >= 0]
    assert summary["average_AP"] == pytest.approx(sum(defined) / len(defined))
    pothole_metrics = json.loads((out / "pothole" / "metrics.json").read_text())
    assert pothole_metrics["prompts"] == ["there are some holes on the road"]  # GLIP's caption prompt (odinw_35)
    raccoon_metrics = json.loads((out / "Raccoon" / "metrics.json").read_text())
    assert raccoon_metrics["prompts"] == ["raccoon. raccoon-face"]  # override names only cover id 1
    assert (out / "Raccoon" / "detections.json").is_file()
    assert "average" in result.stdout and "pothole" in result.stdout

    # --no-caption-prompts uses GLIP's override name; a missing dataset fails before any model runs.
    result = _cli(["eval", "odinw", "--root", str(root), "--datasets", "pothole", "--no-caption-prompts",
                   "--out", str(tmp_path / "plain"), *_model_args(checkpoint, tiny_tokenizer_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "plain" / "pothole" / "metrics.json").read_text())["prompts"] == ["pothole"]
    result = _cli(["eval", "odinw", "--root", str(root), "--datasets", "pothole,Aquarium",
                   *_model_args(tmp_path / "not-loaded.safetensors", tiny_tokenizer_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Aquarium" in result.output and "not-loaded" not in result.output  # checked before the model loads
    assert len(ODINW_13) == 13
