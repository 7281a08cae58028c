"""Shards where they really live: loopback HTTP (http.server, and one that drops the connection), `pipe:`, FIFOs,
S3 through moto's server mode and s3fs, img2dataset folders with their `.parquet` / `_stats.json` sidecars, and
webdataset's sample rules checked against `webdataset.WebDataset` on the same files.

Every server runs on 127.0.0.1 and is started and stopped by the test; shards are written with webdataset's
TarWriter (not glipkit's writer), laid out as img2dataset lays them out.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import logging
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

import glipkit.cli.extract_phrases  # noqa: F401  (registers the command)
import glipkit.cli.pseudo_label  # noqa: F401
from glipkit.cli.app import app
from glipkit.data.captions import iter_caption_records
from glipkit.data.images import find_image_member
from glipkit.data.shards import DUPLICATE_KEY, ShardReadError, ShardSpecError, expand_shards, iter_samples, \
    sample_caption, shard_stem, shard_url
from glipkit.engine.labelling.teacher_data import ImageBatch, LoaderSettings, ShardEnd, TeacherDataset
from pseudo_label_helpers import save_tiny_teacher

NGRAMS = ["--extractor", "ngrams", "--max-phrases", "4"]


# ---------------------------------------------------------------------------------------------------------------- data


def _image(width: int, height: int, color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return buffer.getvalue()


CAPTIONS = ["a red square on a table", "two blue circles near a green triangle", "a yellow star 🚀 in the sky"]


def write_img2dataset(folder: Path, num_shards: int = 2, per_shard: int = 3) -> list[Path]:
    """Shards as img2dataset writes them (TarWriter), with its `<shard>.parquet` and `<shard>_stats.json` beside."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(num_shards):
        shard = folder / f"{s:05d}.tar"
        keys, urls, captions = [], [], []
        with wds.TarWriter(str(shard), encoder=False) as writer:
            for i in range(per_shard):
                key, url, caption = f"{s:05d}{i:04d}", f"https://example.com/{s}/{i}.jpg", CAPTIONS[i % 3]
                width, height = 64 + 16 * i, 96 - 16 * i
                meta = {"url": url, "key": key, "caption": caption, "status": "success", "width": width,
                        "height": height, "original_width": width * 10, "original_height": height * 10}
                writer.write({"__key__": key, "jpg": _image(width, height, (40 * i, 90, 200)),
                              "txt": caption.encode(), "json": json.dumps(meta).encode()})
                keys.append(key), urls.append(url), captions.append(caption)
        # img2dataset's metadata also lists the failed downloads, with their captions.
        pq.write_table(pa.table({"key": keys + [f"{s:05d}9999"], "url": urls + ["https://example.com/gone.jpg"],
                                 "caption": captions + ["a failed download"],
                                 "status": ["success"] * len(keys) + ["failed_to_download"]}),
                       folder / f"{s:05d}.parquet")
        (folder / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard + 1, "successes": per_shard}))
        shards.append(shard)
    return shards


def _contents(shard) -> list[tuple[str, dict[str, bytes]]]:
    return [(s.key, s.files) for s in iter_samples(shard)]


# ---------------------------------------------------------------------------------------------------------------- servers


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _DroppingHandler(_QuietHandler):
    """Serves `broken.tar` as a shard whose connection drops half-way (its full length announced)."""

    def do_GET(self) -> None:
        if not self.path.endswith("broken.tar"):
            return super().do_GET()
        data = (Path(self.directory) / "00001.tar").read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        time.sleep(0.2)  # the client has read what came before the connection drops
        self.close_connection = True


@contextlib.contextmanager
def serve(root: Path, handler=_QuietHandler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture()
def s3(moto_s3):
    return moto_s3[0]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def label_options(tmp_path_factory, tiny_tokenizer, tiny_tokenizer_dir) -> list[str]:
    teacher = save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny.safetensors", tiny_tokenizer)
    return ["--model", str(teacher), "--tokenizer", str(tiny_tokenizer_dir), "--preset", "none", "--image-size",
            "64,96", "--batch-size", "2", *NGRAMS, "--no-progress"]


def _label(runner: CliRunner, spec: str, out: Path, options: list[str], workers: int = 0):
    return runner.invoke(app, ["pseudo-label", "--shards", spec, "--out", str(out), "--workers", str(workers),
                               *options], catch_exceptions=False)


def _same_label_rows(a: dict[str, list[dict]], b: dict[str, list[dict]]) -> None:
    """The same tables with the same rows, but for the `shard` column (where each run read from)."""
    assert sorted(a) == sorted(b) and sum(map(len, a.values())) == 6
    for table, rows in a.items():
        assert [{k: v for k, v in r.items() if k != "shard"} for r in rows] == \
            [{k: v for k, v in r.items() if k != "shard"} for r in b[table]]


def _extract(runner: CliRunner, spec: str, out: Path, *extra: str):
    return runner.invoke(app, ["extract-phrases", "--shards", spec, "--out", str(out), "--workers", "1",
                               *NGRAMS, *extra, "--no-progress"], catch_exceptions=False)


def _tables(out: Path) -> dict[str, list[dict]]:
    return {p.name: pq.read_table(p).to_pylist() for p in sorted(out.glob("*.parquet")) if not p.name.startswith("_")}


# ---------------------------------------------------------------------------------------------------------------- rules


def test_sample_rules_match_webdataset(tmp_path: Path) -> None:
    jpg, png = _image(8, 6, (255, 0, 0)), _image(6, 8, (0, 255, 0), "PNG")
    samples = [
        {"__key__": "000000000", "input.jpg": jpg, "txt": b"an image named by its last extension"},
        {"__key__": "dir/img", "001.jpg": jpg, "json": json.dumps({"caption": "a json caption"}).encode()},
        {"__key__": "UPPER", "JPG": jpg, "TXT": b"upper-case extensions"},
        {"__key__": "000000003", "jpg": jpg, "txt": b"", "json": json.dumps({"caption": "empty txt"}).encode()},
        {"__key__": "x.v2/000000004", "png": png, "seg.png": png, "txt": b"a dot in the directory"},
    ]
    expected_captions = ["an image named by its last extension", "a json caption", "upper-case extensions",
                         "empty txt", "a dot in the directory"]
    plain = tmp_path / "rules.tar"
    with wds.TarWriter(str(plain), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    compressed = tmp_path / "rules.tar.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    for shard in (plain, compressed):
        theirs = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
        ours = list(iter_samples(shard))
        assert [(s.key, s.files) for s in ours] == [
            (t["__key__"], {k: v for k, v in t.items() if not k.startswith("__")}) for t in theirs]
        decoded = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False).decode("pil"))
        for sample, their in zip(ours, decoded):
            images = {k for k, v in their.items() if isinstance(v, Image.Image)}
            assert find_image_member(sample.files)[0] in images, (sample.key, images)
        assert [sample_caption(s) for s in ours] == expected_captions
    assert shard_stem(compressed) == "rules" and shard_stem("pipe:curl -s http://h/a/00012.tar.gz") == "00012"


def test_duplicate_keys_are_reported_and_the_first_kept(tmp_path: Path) -> None:
    shard = tmp_path / "dup.tar"
    with wds.TarWriter(str(shard), encoder=False) as writer:
        for key, caption in [("a", "first"), ("a", "adjacent twin"), ("b", "bee"), ("a", "distant twin")]:
            writer.write({"__key__": key, "jpg": _image(8, 8, (len(caption) * 9, 0, 0)), "txt": caption.encode()})
    samples = list(iter_samples(shard))
    assert [(s.key, s.error) for s in samples] == [("a", None), ("a", DUPLICATE_KEY), ("b", None),
                                                   ("a", DUPLICATE_KEY)]
    assert samples[0].files["txt"] == b"first" and samples[1].files == {} and samples[3].files == {}
    records = [(r.key, r.caption, r.error) for r in iter_caption_records(shard)]
    assert records == [("a", "first", None), ("a", None, DUPLICATE_KEY), ("b", "bee", None),
                       ("a", None, DUPLICATE_KEY)]
    # The labelling pipeline fails the twins and never pairs one sample's image with another's caption.
    dataset = TeacherDataset([str(shard)], LoaderSettings(min_size=32, max_size=32, batch_size=4,
                                                          extraction=_ngrams_settings()))
    items = list(dataset)
    end = items[-1]
    assert isinstance(end, ShardEnd) and end.read == 4
    assert [(f[1], f[2]) for f in end.failures] == [("a", DUPLICATE_KEY), ("a", DUPLICATE_KEY)]
    records = [r for item in items if isinstance(item, ImageBatch) for r in item.records] + end.unlabelled
    assert sorted((r.key, r.caption) for r in records) == [("a", "first"), ("b", "bee")]


def _ngrams_settings():
    from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings

    return ExtractPhrasesSettings(extractor="ngrams")


# ---------------------------------------------------------------------------------------------------------------- specs


def test_img2dataset_folder_inputs(tmp_path: Path, runner: CliRunner, caplog) -> None:
    folder = tmp_path / "i2d"
    shards = write_img2dataset(folder)
    (folder / "notes.json").write_text("{}")
    for spec in (str(folder), str(folder / "*"), f"{folder}/{{00000..00001}}.*"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert expand_shards(spec) == shards
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "00000.parquet" in said[0] and "not shards" in said[0], said
    for named in ("00000.parquet", "00000_stats.json", "notes.json"):
        with pytest.raises(ShardSpecError, match="is not a shard"):
            expand_shards(str(folder / named))
    out = tmp_path / "phrases"
    result = _extract(runner, str(folder / "*"), out)
    assert result.exit_code == 0, result.output
    tables = _tables(out)
    assert sorted(tables) == ["00000.phrases.parquet", "00001.phrases.parquet"]
    assert [r["key"] for r in tables["00000.phrases.parquet"]] == [s.key for s in iter_samples(shards[0])]
    result = _extract(runner, str(folder / "00000.parquet"), tmp_path / "nothing")
    assert result.exit_code == 2 and "is not a shard" in result.output


# ---------------------------------------------------------------------------------------------------------------- sources


def test_http_pipe_fifo_and_mixed_lists_read_what_the_files_hold(tmp_path: Path) -> None:
    shards = write_img2dataset(tmp_path / "i2d")
    local = [_contents(s) for s in shards]
    with serve(tmp_path) as base:
        urls = [f"{base}/i2d/00000.tar", f"{base}/i2d/00001.tar"]
        (tmp_path / "i2d" / "list.txt").write_text(f"# shards\n00000.tar\n{urls[1]}\n")
        for spec in (f"{base}/i2d/{{00000..00001}}.tar", f"{base}/i2d/*.tar", f"{base}/i2d/", f"{base}/i2d/list.txt"):
            assert expand_shards(spec) == urls, spec
        assert [_contents(u) for u in urls] == local
        assert expand_shards(f"{shards[0]},{urls[1]}") == [shards[0], urls[1]]  # local and remote mixed
        assert shard_url(urls[1]) == urls[1] and shard_url(Path("i2d/x.tar")) == str(Path.cwd() / "i2d/x.tar")
        with pytest.raises(ShardReadError, match="missing.tar: cannot open: no such file"):
            list(iter_samples(f"{base}/i2d/missing.tar"))
    assert _contents(f"pipe:cat {shards[1]}") == local[1]
    assert _contents(f"file://{shards[1]}") == local[1]
    with pytest.raises(ShardReadError, match="command exited with status 1"):
        list(iter_samples(f"pipe:cat {tmp_path / 'missing.tar'} 2>/dev/null"))
    fifo = tmp_path / "fifo"  # what `--shards <(cat x.tar)` hands over: a pipe that cannot seek
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(shards[0].read_bytes()))
    feeder.start()
    assert expand_shards(str(fifo)) == [fifo]
    assert _contents(fifo) == local[0]
    feeder.join()


def test_a_dropped_connection_fails_that_shard_by_url_and_the_rest_finish(tmp_path: Path, runner: CliRunner) -> None:
    shards = write_img2dataset(tmp_path / "i2d")
    with serve(tmp_path / "i2d", _DroppingHandler) as base:
        broken = f"{base}/broken.tar"
        got = []
        with pytest.raises(ShardReadError) as info:
            for sample in iter_samples(broken):
                got.append(sample.key)
        assert str(info.value).startswith(broken) and "after 3 retries" in info.value.reason
        assert "ClientPayloadError" in info.value.reason
        assert 1 <= len(got) < 3 and got == [s.key for s in iter_samples(shards[1])][: len(got)]  # before the damage
        out = tmp_path / "phrases"
        result = _extract(runner, f"{base}/{{00000,broken}}.tar", out)
        assert result.exit_code == 1, result.output
        assert broken in result.output and "after 3 retries" in result.output
    assert len(_tables(out)["00000.phrases.parquet"]) == 3


def test_extract_phrases_and_pseudo_label_over_http_give_the_local_rows(tmp_path: Path, runner: CliRunner,
                                                                       label_options: list[str]) -> None:
    write_img2dataset(tmp_path / "i2d")
    with serve(tmp_path) as base:
        spec = f"{base}/i2d/{{00000..00001}}.tar"
        outputs = {}
        for name, shard_spec in [("local", str(tmp_path / "i2d")), ("http", spec)]:
            result = _extract(runner, shard_spec, tmp_path / name / "phrases")
            assert result.exit_code == 0, result.output
            result = _label(runner, shard_spec, tmp_path / name / "labels", label_options)
            assert result.exit_code == 0, result.output
            outputs[name] = (_tables(tmp_path / name / "phrases"), _tables(tmp_path / name / "labels"))
        # The reader hands img2dataset's fields to the pipeline (the output stores them).
        dataset = TeacherDataset([f"{base}/i2d/00001.tar"], LoaderSettings(
            min_size=64, max_size=96, batch_size=2, extraction=_ngrams_settings()))
        records = [r for item in dataset if isinstance(item, ImageBatch) for r in item.records]
    assert outputs["http"][0] == outputs["local"][0] and len(outputs["local"][0]) == 2
    _same_label_rows(outputs["local"][1], outputs["http"][1])
    for rows in outputs["http"][1].values():  # img2dataset's fields carried through; boxes index the stored image
        assert all(r["url"].startswith("https://example.com/") and (r["original_width"], r["original_height"]) ==
                   (r["width"] * 10, r["height"] * 10) for r in rows)
    meta = {r.key: r.meta for r in records}
    assert meta["000010001"] == {"url": "https://example.com/1/1.jpg", "original_width": 800,
                                 "original_height": 800}
    assert {r.key: (r.width, r.height) for r in records}["000010001"] == (80, 80)


def test_s3_through_moto_server_reads_what_the_files_hold(tmp_path: Path, runner: CliRunner, s3,
                                                         label_options: list[str]) -> None:
    shards = write_img2dataset(tmp_path / "i2d")
    s3.put(str(tmp_path / "i2d") + "/", "bucket/i2d/", recursive=True)
    assert sorted(s3.ls("bucket/i2d")) == [f"bucket/i2d/{n}" for n in
                                           ("00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet",
                                            "00001.tar", "00001_stats.json")]
    urls = ["s3://bucket/i2d/00000.tar", "s3://bucket/i2d/00001.tar"]
    for spec in ("s3://bucket/i2d/", "s3://bucket/i2d", "s3://bucket/i2d/*", "s3://bucket/i2d/{00000..00001}.tar"):
        assert expand_shards(spec) == urls, spec
    assert [_contents(u) for u in urls] == [_contents(s) for s in shards]
    result = _extract(runner, "s3://bucket/i2d/", tmp_path / "remote")
    assert result.exit_code == 0, result.output
    result = _extract(runner, str(tmp_path / "i2d"), tmp_path / "local")
    assert result.exit_code == 0, result.output
    assert _tables(tmp_path / "remote") == _tables(tmp_path / "local")
    # pseudo-label reads the bucket inside a DataLoader worker process.
    for name, spec in [("remote-labels", "s3://bucket/i2d/"), ("local-labels", str(tmp_path / "i2d"))]:
        result = _label(runner, spec, tmp_path / name, label_options, workers=1)
        assert result.exit_code == 0, result.output
    _same_label_rows(_tables(tmp_path / "remote-labels"), _tables(tmp_path / "local-labels"))
