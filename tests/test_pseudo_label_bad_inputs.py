"""Bad inputs never stop `pseudo-label`: each case is labelled correctly or reported with its key and reason."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from glipkit.data.images import CORRUPT_IMAGE, DEFAULT_MAX_IMAGE_PIXELS, EMPTY_IMAGE, NOT_AN_IMAGE, TOO_LARGE, \
    ImageDecodeError, decode_image, set_pil_pixel_limit
from glipkit.data.shards import NO_CAPTION, write_shard
from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings
from glipkit.engine.labelling.filters import PHRASES_BEYOND_TOKEN_LIMIT, filter_settings
from glipkit.engine.labelling.pseudo_label import PseudoLabelSettings, run_pseudo_label
from glipkit.text.phrases import PhraseOptions
from pseudo_label_helpers import read_rows, tiny_teacher

LONG_CAPTION = " and ".join(["a red circle", "a blue square", "two green stars", "a yellow ball"] * 30)


def _jpeg(size=(96, 80), mode="RGB", color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    """A noisy JPEG cut in half: the header is intact, the scan data ends early."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (400 megapixels) that compresses to ~50 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _sixteen_bit_png() -> bytes:
    array = np.full((48, 64), 65535, dtype=np.uint16)
    array[:, :32] = 32896  # -> 128 in 8 bits
    return _png(Image.fromarray(array))  # mode I;16


def test_decode_image_cases():
    assert decode_image(_jpeg()).size == (96, 80)
    cmyk = decode_image(_jpeg(mode="CMYK", color=(0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and cmyk.getpixel((10, 10))[0] > 200 and cmyk.getpixel((10, 10))[1] < 60
    grey = np.asarray(decode_image(_sixteen_bit_png()))
    assert grey.shape == (48, 64, 3) and grey[0, 0].tolist() == [128] * 3 and grey[0, 40].tolist() == [255] * 3
    assert decode_image(_png(Image.new("RGB", (1, 1), (9, 9, 9)))).size == (1, 1)
    for data, reason in [(b"", EMPTY_IMAGE), (b"not an image at all", NOT_AN_IMAGE),
                         (_truncated_jpeg(), CORRUPT_IMAGE), (_bomb_png(), TOO_LARGE)]:
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
        assert info.value.reason == reason
    pil_limit = Image.MAX_IMAGE_PIXELS
    set_pil_pixel_limit(DEFAULT_MAX_IMAGE_PIXELS)  # what each data worker does: PIL's guard at the same limit
    try:
        # Over the limit: refused from the header, before any pixel is decoded.
        with pytest.raises(ImageDecodeError, match="12000x12000 = 144,000,000 pixels > limit 100,000,000"):
            decode_image(_bomb_png(12000))
        # Over twice the limit PIL's own guard fires first; same reason.
        with pytest.raises(ImageDecodeError, match="--max-image-pixels") as info:
            decode_image(_bomb_png())
        assert info.value.reason == TOO_LARGE
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def test_job_finishes_and_reports_every_bad_sample(tmp_path, tiny_tokenizer):
    good = _jpeg((120, 90))
    samples = [
        ("000", {"jpg": good, "txt": b"a red circle on the grass"}),
        ("001", {"jpg": _truncated_jpeg(), "txt": b"a truncated photo of a dog"}),
        ("002", {"jpg": b"", "txt": b"an empty file of a cat"}),
        ("003", {"png": _png(Image.new("RGB", (1, 1), (90, 90, 200))), "txt": b"a blue square"}),
        ("004", {"jpg": _jpeg((100, 70), mode="CMYK", color=(0, 200, 200, 0)), "txt": b"a red ball"}),
        ("005", {"png": _sixteen_bit_png(), "txt": b"a white star in the sky"}),
        ("006", {"png": _bomb_png(), "txt": b"a huge picture of a tree"}),
        ("007", {"jpg": good}),  # no caption
        ("008", {"jpg": good, "txt": LONG_CAPTION.encode()}),
        ("009", {"txt": b"a caption without an image"}),
        ("010", {"jpg": b"garbage bytes, not a jpeg", "txt": b"a green car"}),
    ]
    write_shard(tmp_path / "shards" / "00000.tar", samples)
    damaged = write_shard(tmp_path / "shards" / "00001.tar", [("100", {"jpg": good, "txt": b"a dog"}),
                                                               ("101", {"jpg": good, "txt": b"a cat"})])
    damaged.write_bytes(damaged.read_bytes()[:3500])  # cut inside the second sample's image data
    shards = [tmp_path / "shards" / "00000.tar", damaged, tmp_path / "shards" / "00002.tar"]  # last one missing

    model = tiny_teacher(tiny_tokenizer)
    settings = PseudoLabelSettings(
        extraction=ExtractPhrasesSettings(extractor="spacy", options=PhraseOptions()),
        filters=filter_settings("none"), batch_size=4, workers=0, image_size=(64, 96),
    )
    report = run_pseudo_label(shards, tmp_path / "out", model, settings)
    assert [r.status for r in report.results] == ["done", "partial", "unreadable"]

    rows = {r["key"]: r for r in read_rows(tmp_path / "out")}
    assert sorted(rows) == ["000", "003", "004", "005", "008", "100"]
    assert (rows["003"]["width"], rows["003"]["height"]) == (1, 1)
    assert (rows["004"]["width"], rows["004"]["height"]) == (100, 70)
    assert (rows["005"]["width"], rows["005"]["height"]) == (64, 48)
    for row in rows.values():
        for box in row["boxes"]:
            assert 0 <= box["x0"] <= box["x1"] <= row["width"] and 0 <= box["y0"] <= box["y1"] <= row["height"]
    assert rows["003"]["boxes"] and rows["004"]["boxes"]  # tiny and CMYK images are labelled

    # The long caption: phrases past GLIP's 256 tokens are kept in the row, flagged, counted, and never get a box.
    long_row = rows["008"]
    encoding = tiny_tokenizer(LONG_CAPTION)
    assert len(encoding["input_ids"]) > 256
    beyond = [i for i, p in enumerate(long_row["phrases"])
              if encoding.char_to_token(p["end"] - 1) > 254 or encoding.char_to_token(p["start"]) > 254]
    assert beyond and len(beyond) < len(long_row["phrases"])
    assert PHRASES_BEYOND_TOKEN_LIMIT in long_row["flags"]
    assert long_row["boxes"] and not {b["phrase"] for b in long_row["boxes"]} & set(beyond)

    stats = json.loads((tmp_path / "out" / "_stats.json").read_text())
    entry = stats["shards"]["00000"]
    assert entry["read"] == 11 and entry["written"] == 5 and entry["failed"] == 6
    assert entry["phrases_beyond_token_limit"] == len(beyond)
    reasons = {f["key"]: f["reason"] for f in entry["failed_keys"]}
    assert reasons == {"001": CORRUPT_IMAGE, "002": EMPTY_IMAGE, "006": TOO_LARGE, "007": NO_CAPTION,
                       "009": "no image", "010": NOT_AN_IMAGE}
    assert entry["failed_by_reason"][TOO_LARGE] == 1
    assert any("--max-image-pixels" in f["detail"] for f in entry["failed_keys"] if f["key"] == "006")
    partial = stats["shards"]["00001"]
    assert partial["status"] == "partial" and partial["written"] == 1 and partial["failed_keys"][0]["key"] == "101"
    assert stats["shards"]["00002"]["status"] == "unreadable" and stats["shards"]["00002"]["output"] is None
    assert stats["totals"]["failed"] == 7 and stats["totals"]["phrases_beyond_token_limit"] == len(beyond)
    assert not (tmp_path / "out" / "00002.labels.parquet").exists()
    assert torch.get_num_threads() >= 1


def test_a_model_that_fails_on_every_image_fails_the_shard_and_a_rerun_redoes_it(tmp_path, tiny_tokenizer,
                                                                                  monkeypatch):
    from glipkit.engine.predictor import Predictor

    samples = [(f"{i:03d}", {"jpg": _jpeg((90, 70)), "txt": b"a red circle on the grass"}) for i in range(3)]
    shards = [write_shard(tmp_path / "shards" / "00000.tar", samples)]
    settings = PseudoLabelSettings(
        extraction=ExtractPhrasesSettings(extractor="spacy", options=PhraseOptions()),
        filters=filter_settings("none"), batch_size=2, workers=0, image_size=(64, 96),
    )
    real_ground = Predictor.ground

    def broken(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(Predictor, "ground", broken)
    report = run_pseudo_label(shards, tmp_path / "out", tiny_teacher(tiny_tokenizer), settings)
    [result] = report.results
    assert result.status == "failed" and "illegal memory access" in result.error
    assert report.not_done == [result]  # exit code 1
    assert not list((tmp_path / "out").glob("*.labels.parquet"))  # no empty table that a rerun would skip

    monkeypatch.setattr(Predictor, "ground", real_ground)
    rerun = run_pseudo_label(shards, tmp_path / "out", tiny_teacher(tiny_tokenizer), settings)
    assert [r.status for r in rerun.results] == ["done"]
    assert sorted(r["key"] for r in read_rows(tmp_path / "out")) == ["000", "001", "002"]
