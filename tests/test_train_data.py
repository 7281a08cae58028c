"""Training data (issue 5): GLIP's detection prompts (§4.5), gold/grounding/ODVG/pseudo sources, augmentation,
collate targets, ratio mixing, determinism of positions, bad samples counted instead of crashing."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glipkit.data.augment import TrainTransform, flip_boxes
from glipkit.data.coco_detection import CocoDetectionSource, read_coco_detection
from glipkit.data.collate import GroundingCollator
from glipkit.data.detection_prompt import DetectionPromptBuilder, DetectionPromptConfig
from glipkit.data.few_shot import few_shot_image_ids
from glipkit.data.grounding_example import BadSample, GroundingExample, clean_boxes
from glipkit.data.mdetr_grounding import MdetrGroundingSource
from glipkit.data.mixture import SourceMixture, parse_mix
from glipkit.data.odvg import OdvgSource
from glipkit.data.pseudo import PseudoFilter, PseudoLabelSource
from glipkit.data.shards import write_shard
from glipkit.data.tables import LABELS_SCHEMA, write_table
from glipkit.data.training_stream import TrainingBatches
from glipkit.demo.gold import write_coco_split
from glipkit.demo.samples import CATEGORIES, make_samples
from glipkit.demo.vocab import write_vocab
from glipkit.model.config import glip_tiny_test

COCO_NAMES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
              "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
              "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
              "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
              "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
              "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
              "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
              "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
              "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
              "hair drier", "toothbrush"]


@pytest.fixture(scope="module")
def synthetic_tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(write_vocab(tmp_path_factory.mktemp("vocab"))))
    assert tokenizer.convert_tokens_to_ids("circle") != tokenizer.unk_token_id
    return tokenizer


@pytest.fixture(scope="module")
def gold_split(tmp_path_factory):
    return write_coco_split(tmp_path_factory.mktemp("gold"), 10, seed=11, max_size=200)


# ------------------------------------------------------------------------------------------------ prompts (§4.5)


def test_detection_prompt_positives_negatives_and_spans(tiny_tokenizer):
    builder = DetectionPromptBuilder(dict(enumerate(COCO_NAMES, start=1)), tiny_tokenizer)
    all_negatives = 0
    orders = set()
    for trial in range(300):
        prompt = builder([1, 17], random.Random(trial))
        assert {1, 17} <= set(prompt.spans) and not prompt.dropped
        names = prompt.text.split(". ")
        assert len(names) == len(prompt.spans) and not prompt.text.endswith(".")  # no trailing separator
        for class_id, (start, end) in prompt.spans.items():
            assert prompt.text[start:end] == COCO_NAMES[class_id - 1]
        negatives = len(prompt.spans) - 2
        assert 1 <= negatives <= 78
        all_negatives += negatives == 78
        orders.add(tuple(names[:3]))
    # CONTROL_PROB: half the prompts carry all negatives (85 > 78 available), half a uniform count in [1, 78].
    assert 0.42 < all_negatives / 300 < 0.60
    assert len(orders) > 250  # shuffled


def test_detection_prompt_drops_positives_beyond_token_limit(tiny_tokenizer):
    # Unknown words split into letters: each name costs 10 word pieces plus 1 for the separator.
    names = {i: "".join(random.Random(i).choice("bcdfghjklmnpqrstvwxz") for _ in range(10)) for i in range(1, 41)}
    builder = DetectionPromptBuilder(names, tiny_tokenizer)
    prompt = builder(list(range(1, 41)), random.Random(0))
    assert len(prompt.spans) == 254 // 11 and len(prompt.dropped) == 40 - 254 // 11
    assert not set(prompt.dropped) & set(prompt.spans)
    assert len(tiny_tokenizer(prompt.text)["input_ids"]) <= 256


def test_fixed_order_prompt(tiny_tokenizer):
    builder = DetectionPromptBuilder({3: "dog", 1: "person", 2: "cat"}, tiny_tokenizer, DetectionPromptConfig(shuffle=False))
    assert builder([2], random.Random(0)).text == "person. cat. dog"


# ------------------------------------------------------------------------------------------------ boxes, sources


def test_coco_boxes_use_the_plus_one_convention(gold_split, synthetic_tokenizer):
    categories, images = read_coco_detection(gold_split)
    data = json.loads(Path(gold_split).read_text())
    first = data["annotations"][0]
    x, y, w, h = first["bbox"]
    image = next(im for im in images if im.image_id == first["image_id"])
    assert image.boxes[0].tolist() == pytest.approx([x, y, x + w - 1, y + h - 1])
    assert categories == {i + 1: n for i, n in enumerate(CATEGORIES)}

    source = CocoDetectionSource(gold_split, Path(gold_split).parent / "images", synthetic_tokenizer)
    example = source.load(0, random.Random(0))
    assert example.boxes.shape == (len(source.images[0].boxes), 4)
    for box_spans, category in zip(example.box_spans, source.images[0].category_ids):
        (start, end), = box_spans
        assert example.prompt[start:end] == CATEGORIES[category - 1]


def test_clean_boxes_clip_or_skip():
    boxes = np.array([[-5, 2, 20, 30], [10, 10, 60, 40], [70, 5, 90, 9], [1, 1, float("nan"), 3]], np.float32)
    clipped, kept, events = clean_boxes(boxes, 64, 48, "clip")
    assert kept.tolist() == [0, 1] and clipped.tolist() == [[0, 2, 20, 30], [10, 10, 60, 40]]
    assert events == {"non-finite box": 1, "box clipped to image": 2, "empty box": 1}
    skipped, kept, events = clean_boxes(boxes, 64, 48, "skip")
    assert kept.tolist() == [1] and skipped.tolist() == [[10, 10, 60, 40]]
    assert events == {"non-finite box": 1, "box outside image": 2}


def test_resize_and_flip_move_boxes_with_the_image():
    image = Image.new("RGB", (200, 100))
    image.paste((255, 0, 0), (20, 10, 60, 50))  # red block: pixels x 20..59, y 10..49
    example = GroundingExample("k", image, "a red square", np.array([[20, 10, 59, 49]], np.float32), [[(0, 12)]])
    cfg = glip_tiny_test().input
    out = TrainTransform(cfg, min_sizes=(50,), max_size=1000, flip_prob=1.0)(example, random.Random(0))
    assert tuple(out.image.shape[1:]) == (50, 100)
    # BGR-normalised red: channel 2 high where the block is.
    red = out.image[2] > 1.0
    ys, xs = torch.nonzero(red, as_tuple=True)
    x0, y0, x1, y1 = out.boxes[0]
    assert (x0, y0, x1, y1) == pytest.approx((100 - 29.5 - 1, 5, 100 - 10 - 1, 24.5))
    assert abs(xs.min().item() - x0) <= 1 and abs(xs.max().item() - x1) <= 1
    assert abs(ys.min().item() - y0) <= 1 and abs(ys.max().item() - y1) <= 1
    assert out.prompt == "a red square"
    assert flip_boxes(flip_boxes(out.boxes, 100), 100).tolist() == out.boxes.tolist()


def test_collate_positive_maps_and_padding(synthetic_tokenizer):
    examples = []
    for prompt, spans in [("a red circle and a blue star", [[(0, 12)], [(17, 28)], [(2, 5), (19, 23)]]),
                          ("circle", [[(0, 6)]])]:
        examples.append(TrainTransform(glip_tiny_test().input, (64,), 128, 0.0)(
            GroundingExample("k", Image.new("RGB", (80, 64)), prompt,
                             np.tile(np.array([[1, 2, 30, 40]], np.float32), (len(spans), 1)), spans),
            random.Random(0)))
    batch = GroundingCollator(synthetic_tokenizer, 256, 32)(examples)
    # [CLS] a red circle and a blue star [SEP] = 9 tokens, plus one padding position (the §8.1 slot).
    assert batch.input_ids.shape == (2, 10) and batch.attention_mask[0].tolist() == [1] * 9 + [0]
    assert batch.images.shape == (2, 3, 64, 96) and batch.image_sizes == [(64, 80), (64, 80)]
    first = batch.targets[0].positive_map
    assert first.shape == (3, 10)
    assert first[0].nonzero().flatten().tolist() == [1, 2, 3]
    assert first[1].nonzero().flatten().tolist() == [5, 6, 7]
    assert first[2].nonzero().flatten().tolist() == [2, 6]  # union of two spans: red, blue
    assert batch.targets[1].positive_map.nonzero().tolist() == [[0, 1]]


def test_mdetr_and_odvg_sources(gold_split, synthetic_tokenizer, tmp_path):
    images = Path(gold_split).parent / "images"
    grounding = MdetrGroundingSource(gold_split, images)
    data = json.loads(Path(gold_split).read_text())
    example = grounding.load(0, random.Random(0))
    record = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == record["id"]]
    assert example.prompt == record["caption"]
    assert [example.prompt[a:b] for (a, b), in example.box_spans] == [a["phrase"] for a in anns]

    lines = []
    for image in data["images"][:2]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
        lines.append({"filename": image["file_name"], "height": image["height"], "width": image["width"],
                      "detection": {"instances": [{"bbox": xyxy(a["bbox"]), "label": a["category_id"] - 1,
                                                   "category": CATEGORIES[a["category_id"] - 1]} for a in anns]}})
        lines.append({"filename": image["file_name"], "height": image["height"], "width": image["width"],
                      "grounding": {"caption": image["caption"], "regions": [
                          {"bbox": xyxy(a["bbox"]), "phrase": a["phrase"], "tokens_positive": a["tokens_positive"]}
                          for a in anns]}})
    path = tmp_path / "data.odvg.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    odvg = OdvgSource(path, images, synthetic_tokenizer)
    assert len(odvg) == 4
    od, vg = odvg.load(0, random.Random(1)), odvg.load(1, random.Random(1))
    coco = CocoDetectionSource(gold_split, images, synthetic_tokenizer).load(0, random.Random(1))
    assert od.boxes.tolist() == coco.boxes.tolist() == vg.boxes.tolist()
    assert [od.prompt[a:b] for (a, b), in od.box_spans] == [CATEGORIES[a["category_id"] - 1]
                                                           for a in data["annotations"]
                                                           if a["image_id"] == data["images"][0]["id"]]
    assert vg.prompt == data["images"][0]["caption"]


def test_few_shot_covers_every_class(gold_split):
    _, images = read_coco_detection(gold_split)
    chosen = few_shot_image_ids(images, 1, seed=3)
    assert chosen == few_shot_image_ids(images, 1, seed=3)
    covered = {c for im in images if im.image_id in set(chosen) for c in im.category_ids}
    assert covered == {c for im in images for c in im.category_ids}
    assert len(chosen) < len(images)


# ------------------------------------------------------------------------------------------------ pseudo-labels


def _pseudo_dataset(root: Path, corrupt_key: str | None = None) -> tuple[Path, Path, list]:
    shards, tables = root / "shards", root / "labels"
    all_samples = []
    for shard_index in range(2):
        samples = make_samples(5, 21, shard_index=shard_index, max_size=180)
        members = []
        for sample in samples:
            files = sample.to_webdataset()
            if sample.key == corrupt_key:
                files["jpg"] = b"not a jpeg"
            members.append((sample.key, files))
        shard = write_shard(shards / f"{shard_index:05d}.tar", members)
        rows = []
        for i, sample in enumerate(samples):
            phrases = []
            boxes = []
            for obj in sample.objects:
                text = sample.caption[obj.span[0]:obj.span[1]]
                if (text, *obj.span) not in [(p["text"], p["start"], p["end"]) for p in phrases]:
                    phrases.append({"text": text, "start": obj.span[0], "end": obj.span[1]})
                index = [p["text"] for p in phrases].index(text)
                x0, y0, x1, y1 = obj.box
                boxes.append({"x0": x0, "y0": y0, "x1": x1 - 1, "y1": y1 - 1, "score": 0.9, "phrase": index})
                # a weak duplicate (removed by NMS) and a low-score box (removed by min score)
                boxes.append({"x0": x0 + 1, "y0": y0, "x1": x1 - 1, "y1": y1 - 1, "score": 0.5, "phrase": index})
                boxes.append({"x0": 0, "y0": 0, "x1": 5, "y1": 5, "score": 0.05, "phrase": index})
            if i == 4:
                boxes = []  # an image without boxes (dropped by min boxes 1)
            rows.append({"key": sample.key, "caption": sample.caption, "phrases": phrases, "shard": str(shard),
                         "width": sample.width, "height": sample.height, "boxes": boxes})
            all_samples.append(sample)
        write_table(tables / f"{shard_index:05d}.parquet", rows, LABELS_SCHEMA, "pseudo-label", {})
    return tables, shards, all_samples


def test_pseudo_source_filters_joins_and_resumes(tmp_path, synthetic_tokenizer):
    tables, shards, samples = _pseudo_dataset(tmp_path)
    source = PseudoLabelSource(tables, synthetic_tokenizer, filters=PseudoFilter(min_score=0.1, nms_iou=0.6),
                               shuffle_chunk=2)
    assert len(source) == 8 and source.prompt_mode == "caption"
    by_key = {s.key: s for s in samples}
    items = [item for _, item in zip(range(20), source.stream(0, seed=5))]
    keys = [item[0].key for item in items]
    assert sorted(keys[:8]) == sorted(keys[8:16]) and len(set(keys[:8])) == 8  # each epoch: every kept image once
    for item in items[:8]:
        example = source.materialize(item, random.Random(0))
        sample = by_key[example.key]
        assert example.prompt == sample.caption
        gold = sorted([o.box[0], o.box[1], o.box[2] - 1, o.box[3] - 1] for o in sample.objects)
        assert np.allclose(sorted(example.boxes.tolist()), gold)
        for (start, end), in example.box_spans:
            assert sample.caption[start:end] in [sample.caption[o.span[0]:o.span[1]] for o in sample.objects]
    # Any start position gives the same continuation as reading from the beginning.
    for start in (3, 8, 13):
        resumed = [item[0].key for _, item in zip(range(5), source.stream(start, seed=5))]
        assert resumed == keys[start:start + 5]
    # The shards can also be found by name.
    moved = PseudoLabelSource(tables, synthetic_tokenizer, shards=str(shards), shuffle_chunk=2)
    assert len(moved) == 8
    unfiltered = PseudoLabelSource(tables, synthetic_tokenizer, filters=PseudoFilter(min_boxes=0))
    assert len(unfiltered) == 10


def test_pseudo_classes_prompt(tmp_path, synthetic_tokenizer):
    tables, _, _ = _pseudo_dataset(tmp_path)
    source = PseudoLabelSource(tables, synthetic_tokenizer, prompt="classes", filters=PseudoFilter(min_score=0.1))
    example = source.materialize(next(source.stream(0, 0)), random.Random(0))
    assert ". " in example.prompt or len(source.vocabulary) == 1
    for (start, end), in example.box_spans:
        assert example.prompt[start:end] in source.vocabulary


# ------------------------------------------------------------------------------------------------ mixing, batches


class _Counting:
    def __init__(self, name, count):
        self.name, self.count = name, count

    def __len__(self):
        return self.count

    def stream(self, start, seed):
        position = start
        while True:
            yield (self.name, position)
            position += 1

    def materialize(self, item, rng):
        raise NotImplementedError


def test_mixture_ratio_and_positions():
    assert parse_mix("gold=1, pseudo=3") == {"gold": 1.0, "pseudo": 3.0}
    with pytest.raises(ValueError, match="NAME=POSITIVE_NUMBER"):
        parse_mix("gold=0")
    mixture = SourceMixture.from_mix({"gold": _Counting("gold", 5), "pseudo": _Counting("pseudo", 7)},
                                     parse_mix("gold=1,pseudo=3"))
    items = [item for _, item in zip(range(400), mixture.stream(0, 0))]
    counts = Counter(item[2][0] for item in items)
    assert counts == {"gold": 100, "pseudo": 300}
    for start in (1, 5, 37):
        assert [i for _, i in zip(range(20), mixture.stream(start, 0))] == items[start:start + 20]
    assert [(i[0], i[1]) for i in items] == [mixture.locate(g) for g in range(400)]


def test_training_batches_skip_bad_samples_and_are_rank_slices(tmp_path, synthetic_tokenizer):
    tables, _, samples = _pseudo_dataset(tmp_path, corrupt_key=make_samples(5, 21, shard_index=0)[1].key)
    source = PseudoLabelSource(tables, synthetic_tokenizer, filters=PseudoFilter(min_score=0.1))
    mixture = SourceMixture([source])
    cfg = glip_tiny_test()
    collator = GroundingCollator(synthetic_tokenizer, 256, 32)
    make = lambda rank, world, batch: TrainingBatches(  # noqa: E731
        mixture, TrainTransform(cfg.input), collator, batch, seed=1, rank=rank, world_size=world, max_steps=4)
    single = list(make(0, 1, 4))
    halves = [list(make(r, 2, 2)) for r in range(2)]
    skipped = sum(b.events.get("skipped: undecodable image", 0) for b in single)
    assert skipped == 2  # 16 samples = two epochs of 8, the corrupt image in each
    assert any(b.skipped for b in single)
    for step in range(4):
        assert single[step].keys == halves[0][step].keys + halves[1][step].keys
        joined = torch.cat([halves[0][step].images.flatten(1)[:, :10], halves[1][step].images.flatten(1)[:, :10]]) \
            if len(halves[0][step]) and len(halves[1][step]) else None
        if joined is not None and single[step].images.shape[-2:] == halves[0][step].images.shape[-2:] \
                == halves[1][step].images.shape[-2:]:
            assert torch.equal(single[step].images.flatten(1)[:, :10], joined)
    # Resuming at step 2 gives the same batches.
    resumed = TrainingBatches(mixture, TrainTransform(cfg.input), collator, 4, seed=1, start_step=2, max_steps=4)
    for batch, again in zip(single[2:], resumed):
        assert batch.keys == again.keys and torch.equal(batch.images, again.images)


def test_undecodable_image_is_a_bad_sample(gold_split, synthetic_tokenizer, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = json.loads(Path(gold_split).read_text())
    for image in data["images"]:
        (images / image["file_name"]).write_bytes(b"\xff\xd8 truncated")
    source = CocoDetectionSource(gold_split, images, synthetic_tokenizer)
    with pytest.raises(BadSample, match="undecodable image"):
        source.load(0, random.Random(0))


def test_pseudo_filters_on_one_row():
    from glipkit.data.pseudo import filter_row

    box = lambda x, score, phrase: {"x0": x, "y0": 0.0, "x1": x + 20, "y1": 20.0, "score": score, "phrase": phrase}  # noqa: E731
    row = {"key": "k", "caption": "a cat. a dog", "width": 100, "height": 50,
           "phrases": [{"text": "a cat", "start": 0, "end": 5}, {"text": "a dog", "start": 7, "end": 12}],
           "boxes": [box(0, 0.9, 0), box(1, 0.8, 1), box(2, 0.7, 0), box(60, 0.6, 1), box(70, 0.2, 1),
                     box(0, 0.5, 7)]}  # the last names a phrase that does not exist
    kept = lambda **f: sorted(round(float(s), 2) for s in filter_row(row, PseudoFilter(**f)).scores)  # noqa: E731
    assert kept() == [0.2, 0.6, 0.7, 0.8, 0.9]
    assert kept(min_score=0.5) == [0.6, 0.7, 0.8, 0.9]
    assert kept(min_score=0.5, nms_iou=0.5) == [0.6, 0.8, 0.9]  # per phrase: the cat at x=2 goes
    assert kept(min_score=0.5, agnostic_nms_iou=0.5) == [0.6, 0.9]  # across phrases: one label per object
    assert kept(max_boxes=2) == [0.8, 0.9]
    assert filter_row(row, PseudoFilter(min_score=0.5, agnostic_nms_iou=0.5, min_boxes=3)) is None
