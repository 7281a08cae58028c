"""`glipkit report`: histograms that add up to the table; against the demo shards' own gold, precision / recall
equal a direct computation, for labels built from the gold with known misses and false boxes and for a labelled
run of the tiny teacher; the best-F1 threshold and AP come out; markdown and HTML are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from glipkit.data.shards import iter_samples
from glipkit.data.tables import LABELS_SCHEMA, label_table_paths, write_table
from glipkit.demo.gold import write_gold_coco
from glipkit.demo.samples import CATEGORIES
from glipkit.export.categories import normalise_phrase
from labels_helpers import cli, labelled_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_tokenizer, tiny_tokenizer_dir) -> Path:
    return labelled_run(tmp_path_factory.mktemp("labelled"), tiny_tokenizer, tiny_tokenizer_dir, "caption")


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def category_of(text: str) -> str | None:
    words = normalise_phrase(text).split()
    last = words[-1] if words else ""
    return next((c for c in CATEGORIES if last in (c, c + "s")), None)


def direct_precision_recall(rows, gold_path: Path, threshold: float) -> tuple[int, int, int]:
    """TP, FP, FN at `threshold`, computed plainly: greedy by score per image and category, IoU >= 0.5."""
    gold = json.loads(gold_path.read_text())
    names = {c["id"]: c["name"] for c in gold["categories"]}
    by_key = {Path(im["file_name"]).stem: im["id"] for im in gold["images"]}
    tp = fp = fn = 0
    for row in rows:
        truth = [(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3],
                  names[a["category_id"]]) for a in gold["annotations"] if a["image_id"] == by_key[row["key"]]]
        used = [False] * len(truth)
        labels = [(b["score"], (b["x0"], b["y0"], b["x1"] + 1, b["y1"] + 1),
                   category_of(row["phrases"][b["phrase"]]["text"])) for b in row["boxes"]]
        for score, box, category in sorted((x for x in labels if x[2] and x[0] >= threshold), key=lambda x: -x[0]):
            best, best_iou = None, 0.5
            for j, t in enumerate(truth):
                if not used[j] and t[4] == category and iou(box, t) >= best_iou:
                    best, best_iou = j, iou(box, t)
            if best is None:
                fp += 1
            else:
                used[best], tp = True, tp + 1
        fn += used.count(False)
    return tp, fp, fn


def test_histograms_add_up_to_the_table(run, tmp_path):
    result = cli("report", str(run), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = [r for t in label_table_paths(run) for r in pq.read_table(t).to_pylist()]
    boxes = [b for r in rows for b in r["boxes"]]
    stats = data["run"]
    assert stats["images"] == len(rows) == 8 and stats["boxes"] == len(boxes) > 0
    assert sum(stats["score_hist"].values()) == sum(stats["box_size_hist"].values()) == len(boxes)
    assert sum(stats["boxes_per_image_hist"].values()) == sum(stats["phrases_per_image_hist"].values()) == 8
    for kept in stats["kept_at_threshold"]:
        assert kept["boxes"] == sum(b["score"] >= kept["threshold"] for b in boxes)
        assert kept["images_with_boxes"] == sum(any(b["score"] >= kept["threshold"] for b in r["boxes"]) for r in rows)
    top = stats["top_phrases"][0]
    scores = [b["score"] for r in rows for b in r["boxes"]
              if normalise_phrase(r["phrases"][b["phrase"]]["text"]) == top["phrase"]]
    assert top["boxes"] == len(scores) and top["mean_score"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert set(data["shards"]) == {t.name for t in label_table_paths(run)}
    assert sum(s["boxes"] for s in data["shards"].values()) == len(boxes)
    assert "<svg" in (tmp_path / "r" / "report.html").read_text()
    assert "| score >= |" in (tmp_path / "r" / "report.md").read_text()


def gold_label(obj: dict, score: float, phrase: int) -> dict:
    """A label row's box exactly on a demo object's gold box (tables hold the +1 convention's inclusive x1, y1)."""
    x0, y0, x1, y1 = obj["box"]
    return {"x0": x0, "y0": y0, "x1": x1 - 1, "y1": y1 - 1, "score": score, "phrase": phrase}


def labels_row(shard: Path, key: str, meta: dict, boxes: list[dict], phrases: list[tuple[str, int, int]]) -> dict:
    """A label-table row for one demo sample."""
    return {"key": key, "caption": meta["caption"], "shard": str(shard), "width": meta["width"],
            "height": meta["height"], "boxes": boxes,
            "phrases": [{"text": t, "start": s, "end": e} for t, s, e in phrases]}


def test_precision_and_recall_against_gold_equal_a_direct_computation(run, tmp_path):
    shards = sorted((run.parent / "shards").glob("*.tar"))
    gold = write_gold_coco(shards, tmp_path / "gold.json")
    # Labels made from the gold: every third object missed, every image one false "circle" at score 0.4.
    rows, objects, missed = [], 0, 0
    for shard in shards:
        for sample in iter_samples(shard, extensions=("json",)):
            meta = json.loads(sample.files["json"])
            phrases = sorted({(o["phrase"], *o["span"]) for o in meta["objects"]}, key=lambda p: p[1])
            index = {p[0]: i for i, p in enumerate(phrases)}
            boxes = []
            for o in meta["objects"]:
                objects += 1
                if objects % 3 == 0:
                    missed += 1
                    continue
                boxes.append(gold_label(o, 0.8, index[o["phrase"]]))
            phrases.append(("a circle", -1, -1))
            boxes.append({"x0": 0, "y0": 0, "x1": 3, "y1": 3, "score": 0.4, "phrase": len(phrases) - 1})
            rows.append(labels_row(shard, sample.key, meta, boxes, phrases))
    write_table(tmp_path / "made" / "all.labels.parquet", rows, LABELS_SCHEMA, "pseudo-label", {})
    result = cli("report", str(tmp_path / "made"), "--gold", str(gold), "--out", str(tmp_path / "r1"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r1" / "report.json").read_text())["gold"]
    curve = {r["threshold"]: r for r in report["curve"]}
    found, images = objects - missed, len(rows)
    assert (curve[0.5]["tp"], curve[0.5]["fp"], curve[0.5]["fn"]) == (found, 0, missed)
    assert (curve[0.3]["tp"], curve[0.3]["fp"], curve[0.3]["fn"]) == (found, images, missed)
    assert curve[0.5]["precision"] == 1.0 and curve[0.5]["recall"] == pytest.approx(found / objects, abs=1e-4)
    assert report["best"]["threshold"] == 0.45 and report["images"] == images
    for threshold in (0.3, 0.5):
        assert direct_precision_recall(rows, gold, threshold) == tuple(curve[threshold][k] for k in ("tp", "fp", "fn"))
    assert 0.5 < report["AP"] < 1.0 and report["AP50"] > report["AP"] - 1e-9

    # The tiny teacher's own labels: whatever they are, the report counts them as a direct computation does.
    result = cli("report", str(run), "--gold", str(gold), "--out", str(tmp_path / "r2"))
    assert result.exit_code == 0, result.output
    curve = {r["threshold"]: r for r in json.loads((tmp_path / "r2" / "report.json").read_text())["gold"]["curve"]}
    rows = [r for t in label_table_paths(run) for r in pq.read_table(t).to_pylist()]
    for threshold in (0.0, 0.1, 0.3):
        assert direct_precision_recall(rows, gold, threshold) == tuple(curve[threshold][k] for k in ("tp", "fp", "fn"))


def test_boxes_with_wrong_names_count_for_localisation_only(run, tmp_path):
    shards = sorted((run.parent / "shards").glob("*.tar"))
    gold = write_gold_coco(shards, tmp_path / "gold.json")
    # Every gold object boxed exactly, each named as another category (a teacher that finds but cannot name).
    rows, objects = [], 0
    for shard in shards:
        for sample in iter_samples(shard, extensions=("json",)):
            meta = json.loads(sample.files["json"])
            boxes, phrases = [], []
            for o in meta["objects"]:
                objects += 1
                wrong = CATEGORIES[(CATEGORIES.index(o["category"]) + 1) % len(CATEGORIES)]
                phrases.append((f"a {wrong}", -1, -1))
                boxes.append(gold_label(o, 0.8, len(phrases) - 1))
            rows.append(labels_row(shard, sample.key, meta, boxes, phrases))
    write_table(tmp_path / "made" / "all.labels.parquet", rows, LABELS_SCHEMA, "pseudo-label", {})
    result = cli("report", str(tmp_path / "made"), "--gold", str(gold), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())["gold"]
    named = {r["threshold"]: r for r in report["curve"]}[0.5]
    any_name = {r["threshold"]: r for r in report["any_name_curve"]}[0.5]
    assert (named["tp"], named["fp"], named["fn"]) == (0, objects, objects)
    assert (any_name["tp"], any_name["fp"], any_name["fn"]) == (objects, 0, 0)
    assert {r["threshold"]: r for r in report["any_name_curve"]}[0.9]["tp"] == 0
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| 0.50 | 0.000 | 0.000 | 0.000 | 1.000 | 1.000 |" in markdown
