"""`glipkit export`: COCO scores AP 1.0 against itself and reads back through train-student's gold source with the
table's boxes; ODVG (VG and OD records) reads back through the ODVG source; YOLO passes ultralytics' own dataset
checker; filters and a classes file keep exactly what a direct computation keeps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from glipkit.data.coco_detection import CocoDetectionSource
from glipkit.data.odvg import OdvgSource
from glipkit.data.tables import label_table_paths
from glipkit.evaluation.coco import evaluate_coco
from glipkit.export.categories import normalise_phrase
from labels_helpers import cli, labelled_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer, tiny_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("labelled")
    return {mode: labelled_run(root, tiny_tokenizer, tiny_tokenizer_dir, mode) for mode in ("caption", "classes")}


def table_rows(labels: Path) -> dict[str, dict]:
    return {r["key"]: r for t in label_table_paths(labels) for r in pq.read_table(t).to_pylist()}


def table_boxes(row: dict, min_score: float = 0.0) -> list[tuple]:
    """(x0, y0, x1, y1, normalised phrase) of a row's boxes, sorted."""
    return sorted((b["x0"], b["y0"], b["x1"], b["y1"], normalise_phrase(row["phrases"][b["phrase"]]["text"]))
                  for b in row["boxes"] if b["score"] >= min_score)


def close(a: list[tuple], b: list[tuple], atol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(np.allclose(x[:4], y[:4], atol=atol) and x[4] == y[4] for x, y in zip(a, b))


def test_coco_export_scores_ap_one_and_reads_back_as_gold(runs, tmp_path, tiny_tokenizer):
    rows = table_rows(runs["caption"])
    result = cli("export", str(runs["caption"]), "--to", "coco", "--out", str(tmp_path / "coco"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "coco" / "instances.json").read_text())
    kept = {k for k, r in rows.items() if r["boxes"]}
    assert {Path(im["file_name"]).stem for im in data["images"]} == kept and kept
    assert len(data["annotations"]) == sum(len(rows[k]["boxes"]) for k in kept)
    ann = data["annotations"][0]
    assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3]) and "score" in ann
    names = sorted({normalise_phrase(p["text"]) for r in rows.values() for b in r["boxes"]
                    for p in [r["phrases"][b["phrase"]]]})
    assert [c["name"] for c in data["categories"]] == names and [c["id"] for c in data["categories"]][0] == 1

    # pycocotools: the export as detections against itself is AP 1.0.
    detections = [{**a, "score": a["score"]} for a in data["annotations"]]
    assert evaluate_coco(tmp_path / "coco" / "instances.json", detections).metrics["AP"] == pytest.approx(1.0)

    # train-student --gold reads the same boxes (GLIP's +1 convention) and the images decode.
    source = CocoDetectionSource(tmp_path / "coco" / "instances.json", tmp_path / "coco" / "images", tiny_tokenizer,
                                 shuffle=False)
    category = {c["id"]: c["name"] for c in data["categories"]}
    for index, record in enumerate(source.images):
        row = rows[Path(record.file_name).stem]
        got = sorted((*map(float, box), category[c]) for box, c in zip(record.boxes, record.category_ids))
        assert close(got, table_boxes(row)), record.file_name
        example = source.load(index, random.Random(0))
        assert example.image.size == (row["width"], row["height"]) and len(example.boxes) == len(row["boxes"])


def test_odvg_exports_read_back_through_the_odvg_source(runs, tmp_path, tiny_tokenizer):
    # Caption mode: VG records whose regions are caption spans.
    rows = table_rows(runs["caption"])
    assert cli("export", str(runs["caption"]), "--to", "odvg", "--out", str(tmp_path / "vg")).exit_code == 0
    source = OdvgSource(tmp_path / "vg" / "odvg.jsonl", tmp_path / "vg" / "images", tiny_tokenizer, shuffle=False)
    assert len(source) == sum(1 for r in rows.values() if r["boxes"]) and not (tmp_path / "vg" / "label_map.json").exists()
    for index in range(len(source)):
        record = source.record(index)
        row = rows[Path(record["filename"]).stem]
        assert record["grounding"]["caption"] == row["caption"]
        example = source.load(index, random.Random(0))
        got = sorted((*map(float, box), normalise_phrase(example.prompt[s[0][0]:s[0][1]]))
                     for box, s in zip(example.boxes, example.box_spans))
        assert close(got, table_boxes(row))

    # Classes mode: OD records with a label map.
    rows = table_rows(runs["classes"])
    assert cli("export", str(runs["classes"]), "--to", "odvg", "--out", str(tmp_path / "od")).exit_code == 0
    label_map = json.loads((tmp_path / "od" / "label_map.json").read_text())
    source = OdvgSource(tmp_path / "od" / "odvg.jsonl", tmp_path / "od" / "images", tiny_tokenizer,
                        label_map=tmp_path / "od" / "label_map.json", shuffle=False)
    assert len(source) == sum(1 for r in rows.values() if r["boxes"]) > 0
    for index in range(len(source)):
        record = source.record(index)
        row = rows[Path(record["filename"]).stem]
        got = sorted((*(v for v in i["bbox"][:2]), i["bbox"][2] - 1, i["bbox"][3] - 1, label_map[str(i["label"])])
                     for i in record["detection"]["instances"])
        assert close(got, table_boxes(row))
        assert len(source.load(index, random.Random(0)).boxes) == len(row["boxes"])


def test_yolo_export_passes_the_ultralytics_checker(runs, tmp_path):
    rows = table_rows(runs["classes"])
    out = tmp_path / "yolo"
    result = cli("export", str(runs["classes"]), "--to", "yolo", "--out", str(out), "--val-fraction", "0.5",
                 "--seed", "3")
    assert result.exit_code == 0, result.output
    labels = {p.stem: p for p in (out / "labels").rglob("*.txt")}
    assert set(labels) == {k for k, r in rows.items() if r["boxes"]}
    assert {p.parent.name for p in labels.values()} == {"train", "val"}  # 8 images, half in val
    names = __import__("yaml").safe_load((out / "data.yaml").read_text())["names"]
    for key, path in labels.items():
        row = rows[key]
        lines = [line.split() for line in path.read_text().splitlines()]
        got = []
        for c, cx, cy, w, h in lines:
            cx, cy, w, h = (float(v) for v in (cx, cy, w, h))
            x0, x1 = (cx - w / 2) * row["width"], (cx + w / 2) * row["width"] - 1
            y0, y1 = (cy - h / 2) * row["height"], (cy + h / 2) * row["height"] - 1
            got.append((x0, y0, x1, y1, names[int(c)]))
        rounded = sorted((*(round(v, 1) for v in g[:4]), g[4]) for g in got)
        assert close(rounded, sorted((*(round(v, 1) for v in t[:4]), t[4]) for t in table_boxes(row)), atol=0.11)
    again = tmp_path / "again"
    cli("export", str(runs["classes"]), "--to", "yolo", "--out", str(again), "--val-fraction", "0.5", "--seed", "3")
    assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*.txt")) == \
        sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))

    check_det_dataset = pytest.importorskip("ultralytics.data.utils").check_det_dataset
    checked = check_det_dataset(str(out / "data.yaml"))
    assert checked["nc"] == len(names) and Path(checked["train"]).is_dir() and Path(checked["val"]).is_dir()
    from ultralytics.data.utils import verify_image_label

    for path in labels.values():
        image = next((out / "images" / path.parent.name).glob(f"{path.stem}.*"))
        verified = verify_image_label((str(image), str(path), "", False, len(names), 0, 0, False))
        assert verified[0] is not None and verified[-1] == "", verified[-1]  # no corrupt image or label
        assert len(verified[1]) == len(path.read_text().splitlines())


def test_filters_and_a_classes_file_keep_what_a_direct_computation_keeps(runs, tmp_path):
    rows = table_rows(runs["caption"])
    classes = tmp_path / "classes.txt"
    classes.write_text("shape: circle, square, triangle, star, diamond\ncar\n")
    result = cli("export", str(runs["caption"]), "--to", "coco", "--out", str(tmp_path / "c"), "--classes",
                 str(classes), "--min-score", "0.2", "--max-boxes", "2", "--no-images")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "c" / "instances.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["shape", "car"] and not (tmp_path / "c" / "images").exists()
    shapes = {"circle", "square", "triangle", "star", "diamond"}

    def category(text: str):
        last = normalise_phrase(text).split()[-1].rstrip("s")
        return "shape" if last in shapes else "car" if last == "car" else None

    expected = {}
    for key, row in rows.items():
        best = sorted((b for b in row["boxes"] if b["score"] >= 0.2), key=lambda b: -b["score"])[:2]
        kept = [category(row["phrases"][b["phrase"]]["text"]) for b in best]
        if any(kept):
            expected[key] = sorted(c for c in kept if c)
    got = {}
    for image in data["images"]:
        got[image["file_name"]] = sorted(data["categories"][a["category_id"] - 1]["name"]
                                         for a in data["annotations"] if a["image_id"] == image["id"])
    assert got == expected


def test_bad_inputs_are_one_line(runs, tmp_path):
    missing = cli("export", str(tmp_path / "nothing"), "--to", "coco", "--out", str(tmp_path / "x"))
    assert missing.exit_code == 2 and "label tables not found" in missing.output
    elsewhere = cli("export", str(runs["caption"]), "--to", "yolo", "--out", str(tmp_path / "y"), "--shards",
                    str(tmp_path / "nowhere"))
    assert elsewhere.exit_code == 2 and len(elsewhere.output.strip().splitlines()) == 1


def test_folder_in_yolo_dataset_out_in_two_commands(runs, tmp_path, tiny_tokenizer_dir):

    from glipkit.demo.samples import make_samples

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, sample in enumerate(make_samples(3, seed=2, min_size=64, max_size=96)):
        name = folder / ("sub" if i == 2 else "") / f"img.{i:03d}.png"
        sample.render().save(name)
        if i == 0:
            name.with_suffix(".txt").write_text(sample.caption)
    labels, yolo = tmp_path / "labels", tmp_path / "yolo"
    teacher = runs["caption"].parent / "tiny.safetensors"
    result = cli("pseudo-label", "--images", str(folder), "--out", str(labels), "--model", str(teacher),
                 "--tokenizer", str(tiny_tokenizer_dir), "--prompt-mode", "classes",
                 "--classes", "circle. square. star", "--preset", "none", "--box-threshold", "0.05",
                 "--workers", "0", "--image-size", "64,96", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for t in label_table_paths(labels) for r in pq.read_table(t).to_pylist()}
    assert set(rows) == {"img_000", "img_001", "sub_img_002"}
    result = cli("export", str(labels), "--to", "yolo", "--out", str(yolo), "--min-boxes", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (yolo / "images").rglob("*.png")) == ["img_000.png", "img_001.png",
                                                                        "sub_img_002.png"]
    check_det_dataset = pytest.importorskip("ultralytics.data.utils").check_det_dataset
    assert check_det_dataset(str(yolo / "data.yaml"))["names"] == {0: "circle", 1: "square", 2: "star"}
