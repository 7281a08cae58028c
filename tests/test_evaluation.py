"""Evaluation pieces without a model: COCO AP, LVIS fixed AP, Flickr30K recall@k, ODinW lists, prompt files."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from glipkit.evaluation.coco import (
    COCO_METRIC_NAMES,
    category_label_map,
    detections_to_coco,
    evaluate_coco,
)
from glipkit.evaluation.flickr import (
    FlickrPhrase,
    FlickrSample,
    PhrasePrediction,
    evaluate_flickr_recall,
    group_by_phrase,
    load_flickr_grounding,
)
from glipkit.evaluation.lvis import LVIS_METRIC_NAMES, TopKPerCategory, evaluate_lvis_fixed_ap
from glipkit.evaluation.odinw import (
    ODINW_13,
    average_ap,
    class_prompts,
    load_dataset_list,
    resolve_datasets,
    select_datasets,
)
from glipkit.text.prompt_file import (
    ClassPrompt,
    PromptFileError,
    load_prompt_file,
    parse_prompts,
    prompt_parts,
)

DATA_DIR = Path(__file__).resolve().parent / "data"


# ----------------------------------------------------------------------------------------------- COCO


def _synthetic_coco(seed: int = 0):
    """Ground truth with non-contiguous category ids and all three area ranges, plus noisy detections."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 2, "name": "dog"}, {"id": 5, "name": "cat"}, {"id": 9, "name": "traffic light"}]
    images, anns, dets = [], [], []
    for i in range(12):
        images.append({"id": 10 + i, "width": 256, "height": 256, "file_name": f"{i}.png"})
        for _ in range(rng.integers(1, 5)):
            cat = int(rng.choice([2, 5, 9]))
            w, h = rng.uniform(8, 150, 2)
            x, y = rng.uniform(0, 256 - w), rng.uniform(0, 256 - h)
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if rng.random() < 0.85:  # found, with localisation noise
                j = rng.normal(0, 0.08, 4) * np.array([w, h, w, h])
                dets.append({"image_id": 10 + i, "category_id": cat, "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]],
                             "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):  # false positives
            w, h = rng.uniform(8, 100, 2)
            dets.append({"image_id": 10 + i, "category_id": int(rng.choice([2, 5, 9])),
                         "bbox": [float(rng.uniform(0, 150)), float(rng.uniform(0, 150)), w, h],
                         "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _pycocotools_direct(gt_dict, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(gt_dict))
        gt.createIndex()
        dt = gt.loadRes(json.loads(json.dumps(dets)))
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def test_coco_ap_equals_pycocotools_run_directly():
    gt, dets = _synthetic_coco()
    ref = _pycocotools_direct(gt, dets)
    result = evaluate_coco(gt, dets)
    assert list(result.metrics) == list(COCO_METRIC_NAMES)
    np.testing.assert_allclose([result.metrics[n] for n in COCO_METRIC_NAMES], ref.stats, atol=1e-12)
    assert 0.2 < result.metrics["AP"] < 0.95  # a non-trivial score, not a degenerate 0 or 1
    for k, cat_id in enumerate(ref.params.catIds):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert result.per_category_ap[cat_id] == pytest.approx(p[p > -1].mean(), abs=1e-12)
    assert result.category_names == {2: "dog", 5: "cat", 9: "traffic light"}
    assert result.num_detections == len(dets)


def test_coco_detections_file_and_list_agree_and_inputs_are_not_modified(tmp_path):
    gt, dets = _synthetic_coco(1)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    snapshot = json.dumps(dets)
    from_list = evaluate_coco(gt, dets)
    from_files = evaluate_coco(tmp_path / "gt.json", str(tmp_path / "dets.json"))
    assert from_files.metrics == from_list.metrics
    assert json.dumps(dets) == snapshot  # pycocotools adds id/area/segmentation to what it is given


def test_coco_perfect_detections_give_ap_one():
    gt, _ = _synthetic_coco(2)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    result = evaluate_coco(gt, perfect)
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert result.metrics["AP50"] == pytest.approx(1.0)
    assert all(ap == pytest.approx(1.0) for ap in result.per_category_ap.values())


def test_coco_empty_detections_score_zero_with_a_warning():
    gt, _ = _synthetic_coco(3)
    with pytest.warns(UserWarning, match="no detections"):
        result = evaluate_coco(gt, [])
    assert result.metrics["AP"] == 0.0 and result.metrics["AR100"] == 0.0
    assert set(result.per_category_ap.values()) == {0.0}
    assert result.num_detections == 0


def test_coco_image_subset_and_unknown_images():
    gt, dets = _synthetic_coco(4)
    first = [gt["images"][0]["id"], gt["images"][1]["id"]]
    sub_gt = dict(gt, images=gt["images"][:2], annotations=[a for a in gt["annotations"] if a["image_id"] in first])
    sub_dets = [d for d in dets if d["image_id"] in first]
    assert evaluate_coco(gt, dets, image_ids=first).metrics == pytest.approx(evaluate_coco(sub_gt, sub_dets).metrics)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(gt, [{"image_id": 999, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}])


def test_detections_to_coco_plus_one_convention_and_labels():
    torch = pytest.importorskip("torch")
    mapping = category_label_map([{"id": 9}, {"id": 2}, {"id": 5}])
    assert mapping == {1: 2, 2: 5, 3: 9}
    boxes = torch.tensor([[10.0, 20.0, 29.0, 59.0], [0.0, 0.0, 4.0, 4.0]])
    recs = detections_to_coco(7, boxes, torch.tensor([0.9, 0.1]), torch.tensor([3, 1]), mapping)
    assert recs[0] == {"image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)}
    assert recs[1]["category_id"] == 2 and recs[1]["bbox"] == [0.0, 0.0, 5.0, 5.0]
    lvis_style = detections_to_coco(7, boxes, [0.9, 0.1], [3, 1], mapping, plus_one=False)
    assert lvis_style[0]["bbox"] == [10.0, 20.0, 19.0, 39.0]
    assert detections_to_coco(7, np.zeros((0, 4)), [], [], mapping) == []
    with pytest.raises(ValueError, match="label 4"):
        detections_to_coco(7, [[0, 0, 1, 1]], [0.5], [4], mapping)


def test_plus_one_export_of_plus_one_boxes_scores_perfectly():
    # A model in the +1 convention predicts the last pixel column/row (x2 = x + w - 1); the export restores w.
    gt, _ = _synthetic_coco(5)
    mapping = category_label_map(gt["categories"])
    label_of = {cat: label for label, cat in mapping.items()}
    recs = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        recs += detections_to_coco(a["image_id"], [[x, y, x + w - 1, y + h - 1]], [1.0], [label_of[a["category_id"]]],
                                   mapping)
    assert evaluate_coco(gt, recs).metrics["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- LVIS


def _lvis_gt(images, anns, cats):
    return {
        "images": [dict({"neg_category_ids": [], "not_exhaustive_category_ids": []}, **img) for img in images],
        "annotations": [dict(a, id=i + 1, area=a["bbox"][2] * a["bbox"][3]) for i, a in enumerate(anns)],
        "categories": cats,
    }


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


BOX = [10.0, 10.0, 50.0, 40.0]  # medium-sized (2000 px^2)
FAR = [150.0, 150.0, 40.0, 40.0]  # medium too, overlaps nothing


def test_lvis_perfect_detections_give_one_and_frequency_groups():
    cats = [{"id": 1, "name": "a", "frequency": "r"}, {"id": 2, "name": "b", "frequency": "c"},
            {"id": 3, "name": "c", "frequency": "f"}]
    gt = _lvis_gt([{"id": 1}, {"id": 2}], [
        {"image_id": 1, "category_id": 1, "bbox": BOX},
        {"image_id": 1, "category_id": 2, "bbox": FAR},
        {"image_id": 2, "category_id": 3, "bbox": BOX},
    ], cats)
    perfect = [_det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    r = evaluate_lvis_fixed_ap(gt, perfect)
    assert list(r.metrics) == list(LVIS_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "APm", "APr", "APc", "APf", "AR"):
        assert r.metrics[name] == pytest.approx(1.0), name
    assert r.metrics["APs"] == -1.0 and r.metrics["APl"] == -1.0  # no ground truth of those sizes

    # Category 2 missed, category 3 found after a higher-scored false positive on the same image (AP 0.5).
    dets = [perfect[0], _det(2, 3, FAR, 0.95), perfect[2]]
    r = evaluate_lvis_fixed_ap(gt, dets)
    assert r.per_category_ap == pytest.approx({1: 1.0, 2: 0.0, 3: 0.5})
    assert (r.metrics["APr"], r.metrics["APc"], r.metrics["APf"]) == pytest.approx((1.0, 0.0, 0.5))
    assert r.metrics["AP"] == pytest.approx(0.5)


def test_lvis_federated_rules():
    cats = [{"id": 1, "name": "a", "frequency": "f"}]
    anns = [{"image_id": 1, "category_id": 1, "bbox": BOX}]
    true_positive = _det(1, 1, BOX, 0.5)
    false_positive_elsewhere = _det(2, 1, BOX, 0.9)

    # Image 2 neither has the category nor lists it as absent: its detections are not evaluated.
    unknown = _lvis_gt([{"id": 1}, {"id": 2}], anns, cats)
    assert evaluate_lvis_fixed_ap(unknown, [true_positive, false_positive_elsewhere]).metrics["AP"] == pytest.approx(1.0)
    # Listed in neg_category_ids: the higher-scored false positive halves precision at full recall.
    negative = _lvis_gt([{"id": 1}, {"id": 2, "neg_category_ids": [1]}], anns, cats)
    assert evaluate_lvis_fixed_ap(negative, [true_positive, false_positive_elsewhere]).metrics["AP"] == pytest.approx(0.5)

    # An unmatched detection on an image where the category is not exhaustively annotated is ignored.
    stray = _det(1, 1, FAR, 0.9)
    exhaustive = _lvis_gt([{"id": 1}], anns, cats)
    assert evaluate_lvis_fixed_ap(exhaustive, [true_positive, stray]).metrics["AP"] == pytest.approx(0.5)
    not_exhaustive = _lvis_gt([{"id": 1, "not_exhaustive_category_ids": [1]}], anns, cats)
    assert evaluate_lvis_fixed_ap(not_exhaustive, [true_positive, stray]).metrics["AP"] == pytest.approx(1.0)


def test_lvis_top_k_per_category_cap_and_no_per_image_cap():
    cats = [{"id": 1, "name": "a", "frequency": "f"}]
    gt = _lvis_gt([{"id": 1}, {"id": 2, "neg_category_ids": [1]}], [{"image_id": 1, "category_id": 1, "bbox": BOX}], cats)
    false_positives = [_det(2, 1, [5.0 * i, 100.0, 20.0, 20.0], 0.9 - 0.01 * i) for i in range(3)]
    dets = false_positives + [_det(1, 1, BOX, 0.5)]
    # The true positive ranks 4th over the dataset: precision 1/4 at full recall ...
    assert evaluate_lvis_fixed_ap(gt, dets).metrics["AP"] == pytest.approx(0.25)
    assert evaluate_lvis_fixed_ap(gt, dets, topk_per_category=4).metrics["AP"] == pytest.approx(0.25)
    # ... and falls outside a cap of 3 detections per category.
    assert evaluate_lvis_fixed_ap(gt, dets, topk_per_category=3).metrics["AP"] == 0.0

    # No per-image limit: 400 detections on one image, the only true positive scored lowest, still counts.
    many = [_det(1, 1, [100.0 + (i % 20), 100.0, 20.0, 20.0], 0.99 - i * 1e-4) for i in range(399)]
    many.append(_det(1, 1, BOX, 0.001))
    single = _lvis_gt([{"id": 1}], [{"image_id": 1, "category_id": 1, "bbox": BOX}], cats)
    assert evaluate_lvis_fixed_ap(single, many).metrics["AP"] == pytest.approx(1 / 400)


def test_lvis_matches_the_official_lvis_package_on_recorded_cases():
    cases = json.loads((DATA_DIR / "lvis_fixed_ap_reference.json").read_text())["cases"]
    assert len(cases) == 3
    capped_differs = False
    for case in cases:
        r = evaluate_lvis_fixed_ap(case["ground_truth"], case["detections"], topk_per_category=case["topk_per_category"])
        for name, value in case["expected"].items():
            assert r.metrics[name] == pytest.approx(value, abs=1e-9), (case["seed"], name)
        if case["topk_per_category"] < 10_000:
            uncapped = evaluate_lvis_fixed_ap(case["ground_truth"], case["detections"])
            capped_differs = abs(uncapped.metrics["AP"] - case["expected"]["AP"]) > 0.01
    assert capped_differs  # the recorded capped case exercises the cap


def test_lvis_streaming_top_k_equals_the_list_input(tmp_path):
    case = json.loads((DATA_DIR / "lvis_fixed_ap_reference.json").read_text())["cases"][2]
    k = case["topk_per_category"]
    stream = TopKPerCategory(k, buffer_size=5)  # forces many compactions
    dets = case["detections"]
    for start in range(0, len(dets), 7):
        stream.add(dets[start:start + 7])
    from_stream = evaluate_lvis_fixed_ap(case["ground_truth"], stream, topk_per_category=k)
    for name, value in case["expected"].items():
        assert from_stream.metrics[name] == pytest.approx(value, abs=1e-9), name
    assert from_stream.num_detections == len(stream) <= k * len(case["ground_truth"]["categories"])
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    (tmp_path / "gt.json").write_text(json.dumps(case["ground_truth"]))
    from_files = evaluate_lvis_fixed_ap(tmp_path / "gt.json", tmp_path / "dets.json", topk_per_category=k)
    assert from_files.metrics == pytest.approx(from_stream.metrics)


def test_lvis_input_errors_and_empty_detections():
    cats = [{"id": 1, "name": "a", "frequency": "f"}]
    gt = _lvis_gt([{"id": 1}], [{"image_id": 1, "category_id": 1, "bbox": BOX}], cats)
    with pytest.warns(UserWarning, match="no detections"):
        assert evaluate_lvis_fixed_ap(gt, []).metrics["AP"] == 0.0
    coco_style = {"images": [{"id": 1}], "annotations": [], "categories": cats}
    with pytest.raises(ValueError, match="neg_category_ids"):
        evaluate_lvis_fixed_ap(coco_style, [])
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_lvis_fixed_ap(gt, [_det(5, 1, BOX, 0.5)])


# --------------------------------------------------------------------------------------------- Flickr


def _phrase(text, span, boxes):
    return FlickrPhrase(text, (span,), np.asarray(boxes, dtype=np.float64))


def test_flickr_recall_at_k_any_box():
    gt_a = [0.0, 0.0, 10.0, 10.0]
    gt_b = [50.0, 50.0, 70.0, 90.0]
    samples = [
        FlickrSample(1, "1.jpg", "a man and a dog", (_phrase("a man", (0, 5), [gt_a, gt_b]),
                                                      _phrase("a dog", (10, 15), [gt_a])), 100, 100),
        FlickrSample(2, "1.jpg", "two cats", (_phrase("two cats", (0, 8), [gt_b]),), 100, 100),
    ]
    miss = [200.0, 200.0, 210.0, 210.0]
    predictions = {
        # Phrase 1: best box misses, 2nd hits the *second* gt box (any-box rule) -> hit at 5 and 10, not 1.
        1: [PhrasePrediction(np.array([miss, [51.0, 50.0, 70.0, 90.0]]), np.array([0.9, 0.8])),
            # Phrase 2: best-scored box hits although it is listed last.
            PhrasePrediction(np.array([miss, miss, [0.0, 0.0, 9.0, 10.0]]), np.array([0.2, 0.3, 0.7]))],
        # Phrase 3: the hit ranks 7th -> only recall@10.
        2: [PhrasePrediction(np.array([miss] * 6 + [gt_b]), np.linspace(0.9, 0.3, 7))],
    }
    result = evaluate_flickr_recall(samples, predictions)
    assert result.recall == pytest.approx({1: 1 / 3, 5: 2 / 3, 10: 1.0})
    assert result.num_phrases == 3 and result.num_missing_samples == 0
    # IoU 0.5 is the bar: a box covering exactly half of the ground truth is a hit, slightly less is not.
    half = {1: [PhrasePrediction(np.array([[0.0, 0.0, 5.0, 10.0]]), np.array([1.0])),
                PhrasePrediction(np.array([[0.0, 0.0, 4.9, 10.0]]), np.array([1.0]))]}
    assert evaluate_flickr_recall(samples[:1], half, topk=(1,)).recall[1] == pytest.approx(0.5)


def test_flickr_missing_predictions_count_as_misses():
    samples = [FlickrSample(1, "1.jpg", "a dog", (_phrase("a dog", (0, 5), [[0, 0, 10, 10]]),), 20, 20),
               FlickrSample(2, "2.jpg", "a cat", (_phrase("a cat", (0, 5), [[0, 0, 10, 10]]),), 20, 20)]
    preds = {1: [PhrasePrediction(np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([0.5]))]}
    with pytest.warns(UserWarning, match="no predictions"):
        result = evaluate_flickr_recall(samples, preds)
    assert result.recall[1] == pytest.approx(0.5) and result.num_missing_samples == 1


def test_group_by_phrase_uses_label_minus_one():
    boxes = np.arange(16, dtype=float).reshape(4, 4)
    groups = group_by_phrase(boxes, [0.1, 0.2, 0.3, 0.4], [2, 1, 2, 3], num_phrases=3)
    assert [len(g.scores) for g in groups] == [1, 2, 1]
    np.testing.assert_array_equal(groups[1].boxes, boxes[[0, 2]])


def test_flickr_loader_reads_mdetr_separate_gt(tmp_path):
    caption = "A man in a red shirt holds a dog ."
    man, shirt, dog = (0, 5), (9, 20), (27, 32)
    assert caption[9:20] == "a red shirt" and caption[27:32] == "a dog"
    data = {
        "images": [
            {"id": 0, "file_name": "1000.jpg", "height": 300, "width": 400, "caption": caption,
             "dataset_name": "flickr", "tokens_negative": [[0, len(caption)]], "sentence_id": 0,
             "original_img_id": 1000, "tokens_positive_eval": [[list(man)], [list(shirt)], [list(dog)]]},
            {"id": 1, "file_name": "1000.jpg", "height": 300, "width": 400, "caption": "Nothing here .",
             "sentence_id": 1, "original_img_id": 1000, "tokens_positive_eval": []},
        ],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [10, 20, 30, 40],
             "tokens_positive": [list(man)]},
            {"id": 1, "image_id": 0, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [100, 100, 50, 50],
             "tokens_positive": [list(man)]},
            # One box shared by two phrases (MDETR merges near-identical boxes of different entities).
            {"id": 2, "image_id": 0, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [12, 30, 20, 10],
             "tokens_positive": [list(shirt), list(dog)]},
        ],
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    path = tmp_path / "final_flickr_separateGT_val.json"
    path.write_text(json.dumps(data))
    samples = load_flickr_grounding(path)
    assert len(samples) == 2 and samples[1].phrases == ()
    s = samples[0]
    assert (s.file_name, s.caption, s.original_image_id, s.sentence_id) == ("1000.jpg", caption, 1000, 0)
    assert [p.text for p in s.phrases] == ["A man", "a red shirt", "a dog"]
    assert [p.spans for p in s.phrases] == [(man,), (shirt,), (dog,)]
    np.testing.assert_array_equal(s.phrases[0].boxes, [[10, 20, 40, 60], [100, 100, 150, 150]])
    np.testing.assert_array_equal(s.phrases[2].boxes, [[12, 30, 32, 40]])
    merged = load_flickr_grounding(path, merge_boxes=True)[0]
    np.testing.assert_array_equal(merged.phrases[0].boxes, [[10, 20, 150, 150]])


# ---------------------------------------------------------------------------------------------- ODinW


def test_odinw_13_list_and_root_resolution(tmp_path):
    assert len(ODINW_13) == 13 and len({d.name for d in ODINW_13}) == 13
    assert all(d.ann_file.startswith("odinw/") and d.ann_file.endswith(".json") for d in ODINW_13)
    chosen = select_datasets(["pothole", "EGOHANDS_generic"])
    assert [d.name for d in chosen] == ["pothole", "EgoHands_generic"]
    for d in chosen[:1]:
        (tmp_path / d.img_dir).mkdir(parents=True)
        (tmp_path / d.ann_file).write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        resolve_datasets(tmp_path, chosen)
    message = str(err.value)
    assert "EgoHands_generic" in message and "mini_val" in message and "pothole" not in message
    resolved = resolve_datasets(tmp_path, chosen[:1])
    assert resolved[0].ann_file == tmp_path / "odinw/pothole/valid/annotations_without_background.json"
    with pytest.raises(ValueError, match="unknown ODinW"):
        select_datasets(["coco"])


def test_odinw_prompts_and_average():
    pothole = select_datasets(["pothole"])[0]
    [(cat_id, prompt)] = class_prompts(pothole, [{"id": 1, "name": "potholes"}])
    assert (cat_id, prompt) == (1, ClassPrompt("there are some ", "holes", " on the road"))
    [(_, plain)] = class_prompts(pothole, [{"id": 1, "name": "potholes"}], use_prompts=False)
    assert plain == ClassPrompt("", "pothole", "")  # GLIP's override name
    [(_, raw)] = class_prompts(pothole, [{"id": 1, "name": "potholes"}], use_override_names=False, use_prompts=False)
    assert raw.name == "potholes"
    assert average_ap({"a": 0.5, "b": 0.25}) == pytest.approx(0.375)
    with pytest.warns(UserWarning, match="leaves out"):
        assert average_ap({"a": 0.5, "b": -1.0}) == pytest.approx(0.5)


def test_odinw_user_dataset_list(tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps({"dog": {"suffix": " on a leash"}}))
    (tmp_path / "list.json").write_text(json.dumps([
        {"name": "mine", "ann_file": "mine/val.json", "img_dir": "mine/images", "prompt_file": "prompts.json"},
        {"name": "inline", "ann_file": "b/val.json", "img_dir": "b", "prompts": {"cat": "kitten"}},
    ]))
    mine, inline = load_dataset_list(tmp_path / "list.json")
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    assert [p for _, p in class_prompts(mine, cats)] == [ClassPrompt("", "dog", " on a leash"), ClassPrompt("", "cat", "")]
    assert [p.name for _, p in class_prompts(inline, cats)] == ["dog", "kitten"]


# ------------------------------------------------------------------------------------------ prompt files


def test_prompt_file_json_mapping_and_defaults(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({
        "stingray": {"prefix": "", "name": "stingray", "suffix": ", which is flat and round"},
        "Cottontail-Rabbit": "rabbit",
        "penguin": {"suffix": " , which is black and white"},
    }))
    prompts = load_prompt_file(path).for_classes(["fish", "stingray", "Cottontail-Rabbit", "penguin"])
    assert prompts == [
        ClassPrompt("", "fish", ""),
        ClassPrompt("", "stingray", ", which is flat and round"),
        ClassPrompt("", "rabbit", ""),
        ClassPrompt("", "penguin", " , which is black and white"),
    ]
    names, prefixes, suffixes = prompt_parts(prompts)
    assert names == ["fish", "stingray", "rabbit", "penguin"] and prefixes == [""] * 4
    assert suffixes[1] == ", which is flat and round"


def test_prompt_file_list_form_and_errors(tmp_path):
    table = parse_prompts([{"prefix": "there are some ", "name": "holes", "suffix": " on the road"}], "cfg")
    assert table.for_classes(["pothole"]) == [ClassPrompt("there are some ", "holes", " on the road")]
    with pytest.raises(PromptFileError, match="one entry per class"):
        table.for_classes(["pothole", "crack"])
    with pytest.raises(PromptFileError, match="stingrey"):
        parse_prompts({"stingrey": "ray"}, "p.json").for_classes(["stingray"])
    assert parse_prompts({"stingrey": "ray"}).for_classes(["stingray"], strict=False) == [ClassPrompt("", "stingray", "")]
    with pytest.raises(PromptFileError, match=r"p\.json: class 'fish': unknown field"):
        parse_prompts({"fish": {"prefix": "a ", "sufix": "x"}}, "p.json")
    with pytest.raises(PromptFileError, match="non-empty 'name'"):
        parse_prompts([{"prefix": "a "}], "p.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PromptFileError, match="bad.json: not valid JSON"):
        load_prompt_file(bad)
    with pytest.raises(PromptFileError, match="not found"):
        load_prompt_file(tmp_path / "missing.json")


def test_prompt_file_yaml(tmp_path, monkeypatch):
    path = tmp_path / "prompts.yaml"
    path.write_text('stingray:\n  suffix: " which is flat and round"\nfish: small fish\n')
    pytest.importorskip("yaml")
    assert load_prompt_file(path).for_classes(["fish", "stingray"]) == [
        ClassPrompt("", "small fish", ""), ClassPrompt("", "stingray", " which is flat and round")]
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    with pytest.raises(PromptFileError, match="needs PyYAML"):
        load_prompt_file(path)
