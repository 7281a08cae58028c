"""`glipkit show` in a real browser: headless Chromium opens the gallery from file://, a screenshot shows each box
in its colour where the table puts it, and the score slider (set through the URL hash) hides low-score boxes."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glipkit.data.shards import write_shard
from glipkit.data.tables import LABELS_SCHEMA, write_table
from glipkit.viz.palette import PALETTE
from labels_helpers import cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WINDOW = (1000, 700)
# key -> (caption, phrases, boxes as (x0, y0, x1, y1, score, phrase)); images are 96 x 64 and plain grey.
LABELS = {
    "a": ("a dog next to a cat", [("a dog", 0, 5), ("a cat", 14, 19)],
          [(8, 8, 40, 50, 0.9, 0), (55, 10, 88, 54, 0.3, 1)]),
    "b": ("a cat", [("a cat", 0, 5)], [(20, 12, 70, 40, 0.6, 0)]),
    "c": ("nothing to see", [], []),
}


def _jpeg(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    shard = write_shard(root / "shards" / "00000.tar", [(k, {"png": _jpeg(), "txt": v[0].encode()})
                                                        for k, v in LABELS.items()])
    rows = [{"key": k, "caption": c, "shard": str(shard), "width": 96, "height": 64,
             "phrases": [{"text": t, "start": s, "end": e} for t, s, e in p],
             "boxes": [dict(zip(("x0", "y0", "x1", "y1", "score", "phrase"), b)) for b in boxes]}
            for k, (c, p, boxes) in LABELS.items()]
    write_table(root / "labels" / "00000.labels.parquet", rows, LABELS_SCHEMA, "pseudo-label", {})
    result = cli("show", str(root / "labels"), "--out", str(root / "out"), "--sample", "0", "--per-page", "10")
    assert result.exit_code == 0, result.output
    assert "3 images, 3 boxes" in result.output
    return root / "out"


def chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        message = "chromium is not installed (apt-get install -y chromium; .ci/run does it)"
        if os.environ.get("CI"):  # CI installs it: a missing browser there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=3000", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


def dom(gallery: Path, hash_: str, tmp_path: Path) -> str:
    result = chromium(f"{(gallery / 'index.html').as_uri()}#{hash_}", tmp_path, "--dump-dom")
    assert "data-drawn" in result.stdout, result.stderr[-2000:]
    return result.stdout


def drawn(page: str) -> int:
    return int(re.search(r'<body[^>]*data-drawn="(\d+)"', page).group(1))


def frames(page: str) -> dict[str, tuple[float, ...]]:
    """key -> the frame's on-screen rectangle (left, top, width, height) as the page laid it out."""
    cards = re.findall(r'data-key="([^"]+)".*?class="frame"[^>]*data-rect="([^"]+)"', page)
    return {key: tuple(float(v) for v in rect.split(",")) for key, rect in cards}


def edge_colour(pixels: np.ndarray, rect, box, scale: float) -> np.ndarray:
    """The pixels along the left edge of `box` (table pixels) in the screenshot."""
    left, top = rect[0], rect[1]
    x = int(round(left + box[0] * scale))
    ys = [int(round(top + (box[1] + f * (box[3] - box[1])) * scale)) for f in (0.4, 0.5, 0.6, 0.7)]
    return np.stack([pixels[y, x - 1:x + 2] for y in ys]).reshape(-1, 3).astype(int)


def near(pixels: np.ndarray, rgb) -> bool:
    return bool((np.abs(pixels - np.array(rgb)).max(axis=1) <= 40).any())


def test_the_page_draws_every_box_where_the_table_says(gallery, tmp_path):
    page = dom(gallery, "score=0&sort=key", tmp_path)
    assert drawn(page) == 3 and len(re.findall(r'<rect class="box" data-score="[0-9.]+"', page)) == 3
    assert re.search(r'<mark style="background:#e69f00[^"]*">a dog</mark>', page)  # caption in the box's colour
    rects = frames(page)
    assert set(rects) == {"a", "b", "c"}
    shot = tmp_path / "shot.png"
    result = chromium(f"{(gallery / 'index.html').as_uri()}#score=0&sort=key", tmp_path, f"--screenshot={shot}")
    assert shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    scale = rects["a"][2] / 96
    dog, cat = LABELS["a"][2]
    assert near(edge_colour(pixels, rects["a"], dog, scale), PALETTE[0])  # orange: phrase 0
    assert near(edge_colour(pixels, rects["a"], cat, scale), PALETTE[1])  # sky blue: phrase 1
    assert near(edge_colour(pixels, rects["b"], LABELS["b"][2][0], scale), PALETTE[0])
    # Inside a box, away from its edges, the image is still grey: boxes are outlines.
    inside = pixels[int(rects["a"][1] + 30 * scale), int(rects["a"][0] + 24 * scale)]
    assert np.abs(inside.astype(int) - 128).max() <= 12


def test_the_slider_and_the_phrase_filter_change_what_is_drawn(gallery, tmp_path):
    assert drawn(dom(gallery, "score=0.5&sort=key", tmp_path)) == 2  # the 0.3 cat is hidden
    assert drawn(dom(gallery, "score=0.95", tmp_path)) == 0
    cats = dom(gallery, "score=0&phrase=cat", tmp_path)
    assert drawn(cats) == 2 and set(frames(cats)) == {"a", "b"}  # images without a cat box are left out
    shot = tmp_path / "slider.png"
    chromium(f"{(gallery / 'index.html').as_uri()}#score=0.5&sort=key", tmp_path, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    rects = frames(dom(gallery, "score=0.5&sort=key", tmp_path))
    scale = rects["a"][2] / 96
    dog, cat = LABELS["a"][2]
    assert near(edge_colour(pixels, rects["a"], dog, scale), PALETTE[0])
    assert not near(edge_colour(pixels, rects["a"], cat, scale), PALETTE[1])  # gone from the pixels too


def test_predict_results_show_in_the_gallery_and_same_named_inputs_keep_their_drawings(tmp_path, tiny_tokenizer,
                                                                                       tiny_tokenizer_dir):
    from pseudo_label_helpers import save_tiny_teacher

    teacher = save_tiny_teacher(tmp_path / "tiny.safetensors", tiny_tokenizer)
    paths = []
    for folder, shade in (("a", 60), ("b", 200)):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "x.png")
        Image.new("RGB", (96, 64), (shade, shade, shade)).save(paths[-1])
    table = tmp_path / "preds.labels.parquet"
    result = cli("predict", *map(str, paths), "--prompt", "a dog. a cat", "--model", str(teacher), "--tokenizer",
                 str(tiny_tokenizer_dir), "--device", "cpu", "--box-threshold", "0.05", "--draw",
                 str(tmp_path / "drawn"), "--table", str(table))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a_x_glip.jpg", "b_x_glip.jpg"]
    rows = __import__("pyarrow.parquet").parquet.read_table(table).to_pylist()
    assert [r["key"] for r in rows] == ["a_x", "b_x"] and rows[0]["phrases"][1] == {"text": "a cat", "start": 7,
                                                                                   "end": 12}
    boxes = sum(len(r["boxes"]) for r in rows)
    result = cli("show", str(table), "--out", str(tmp_path / "g"))
    assert result.exit_code == 0 and f"2 images, {boxes} boxes" in result.output, result.output
    assert drawn(dom(tmp_path / "g", "score=0", tmp_path)) == min(boxes, 2 * 100)
