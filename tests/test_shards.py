"""Shard specs, tar streaming (with/without images, damaged tars), captions, rank/worker splits, Parquet tables,
_stats.json merging and the synthetic demo data."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from glipkit.data.captions import expand_caption_files, iter_caption_records
from glipkit.data.shards import (
    CAPTION_NOT_UTF8,
    EMPTY_CAPTION,
    INVALID_JSON,
    NO_CAPTION,
    CaptionError,
    ShardReadError,
    ShardSpecError,
    expand_braces,
    expand_shards,
    iter_samples,
    rank_and_world_size,
    sample_caption,
    shard_stem,
    shards_for_rank,
    shards_for_worker,
    write_shard,
)
from glipkit.data.tables import (
    LABELS_SCHEMA,
    PHRASES_SCHEMA,
    AtomicParquetWriter,
    phrases_table,
    read_metadata,
    read_table,
    write_table,
)
from glipkit.engine.shard_job import StatsWriter, read_stats
from glipkit.demo.samples import CATEGORIES, COLORS, make_samples, write_demo_shards
from glipkit.errors import GlipkitUsageError


def _samples(n: int, image_bytes: int = 3000):
    return [
        (f"{i:09d}", {"jpg": bytes([i % 251]) * image_bytes, "txt": f"caption {i}".encode(), "json": b"{}"})
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------------------------- specs


def test_brace_expansion() -> None:
    assert expand_braces("data/{00000..00003}.tar") == [f"data/0000{i}.tar" for i in range(4)]
    assert expand_braces("s{8..11}.tar") == ["s8.tar", "s9.tar", "s10.tar", "s11.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain{}name") == ["plain{}name"]
    assert len(expand_braces("data/{00000..00099}.tar")) == 100


def test_expand_shards_forms(tmp_path: Path) -> None:
    for i in range(4):
        write_shard(tmp_path / "d" / f"{i:05d}.tar", _samples(1))
    (tmp_path / "d" / "notes.json").write_text("{}")
    shards = [tmp_path / "d" / f"{i:05d}.tar" for i in range(4)]
    assert expand_shards(str(tmp_path / "d" / "{00000..00003}.tar")) == shards
    assert expand_shards(tmp_path / "d") == shards
    assert expand_shards(str(tmp_path / "d" / "*.tar")) == shards
    assert expand_shards(f"{shards[2]},{tmp_path / 'd' / '{00000..00001}.tar'},{shards[0]}") == [
        shards[2], shards[0], shards[1]
    ]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# shards\nd/00001.tar\n\n{shards[3]}\nd/{{00000..00001}}.tar\n")
    assert expand_shards(listing) == [shards[1], shards[3], shards[0]]
    # Missing members of a range are kept (reported per shard when read) ...
    assert len(expand_shards(str(tmp_path / "d" / "{00000..00009}.tar"))) == 10
    # ... but a spec naming nothing readable is a usage error.
    for bad in [str(tmp_path / "nothing" / "{0..3}.tar"), str(tmp_path / "d" / "*.tgz"), str(tmp_path / "empty")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(ShardSpecError):
            expand_shards(bad)
    assert issubclass(ShardSpecError, GlipkitUsageError)
    assert shard_stem("a/b/00012.tar") == "00012" and shard_stem("x.tar.gz") == "x" and shard_stem("c.jsonl") == "c"


# ---------------------------------------------------------------------------------------------------------------- reading


def test_round_trip_and_captions_only(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "00000.tar", _samples(6))
    full = list(iter_samples(shard))
    assert [s.key for s in full] == [f"{i:09d}" for i in range(6)]
    assert all(set(s.files) == {"jpg", "txt", "json"} for s in full)
    assert full[4].files["jpg"] == bytes([4]) * 3000
    light = list(iter_samples(shard, with_images=False))
    assert all(set(s.files) == {"txt", "json"} and s.extensions == ("jpg", "txt", "json") for s in light)
    assert [s.caption for s in light] == [f"caption {i}" for i in range(6)]
    only_txt = list(iter_samples(shard, extensions={"txt"}))
    assert all(set(s.files) == {"txt"} for s in only_txt)
    gz = tmp_path / "00001.tar.gz"
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    assert [s.caption for s in iter_samples(gz, with_images=False)] == [s.caption for s in light]


def test_keys_with_directories_and_dots(tmp_path: Path) -> None:
    shard = write_shard(
        tmp_path / "s.tar",
        [("dir/a", {"jpg": b"x", "seg.png": b"y", "txt": b"one"}), ("dir/b", {"txt": b"two"}), ("c", {"txt": b"3"})],
    )
    samples = list(iter_samples(shard, with_images=False))
    assert [(s.key, sorted(s.files)) for s in samples] == [("dir/a", ["txt"]), ("dir/b", ["txt"]), ("c", ["txt"])]
    assert samples[0].extensions == ("jpg", "seg.png", "txt")


def _read_all(path: Path, with_images: bool):
    keys = []
    try:
        for sample in iter_samples(path, with_images=with_images):
            keys.append(sample.key)
            assert sample.files["txt"] == f"caption {int(sample.key)}".encode()
            if with_images:
                assert len(sample.files["jpg"]) == 3000
    except ShardReadError as e:
        return keys, e
    return keys, None


def test_damaged_tars_yield_intact_prefix_then_report(tmp_path: Path) -> None:
    data = write_shard(tmp_path / "good.tar", _samples(8)).read_bytes()
    keys = [f"{i:09d}" for i in range(8)]
    cuts = sorted({100, 512, 700, 4000, 4608, 9000, 12345, 20000, 5120 * 5 + 17, len(data) - 10240 - 1})
    for cut in cuts:
        damaged = tmp_path / f"cut{cut}.tar"
        damaged.write_bytes(data[:cut])
        for with_images in (False, True):
            got, error = _read_all(damaged, with_images)
            assert error is not None, (cut, with_images)
            assert got == keys[: len(got)]  # an intact prefix, in order
            assert error.samples_read == len(got)
            if error.key is not None:
                assert error.key == keys[len(got)]
            assert str(damaged) in str(error)
    # The end-of-archive blocks alone may go: nothing is lost.
    trimmed = tmp_path / "trimmed.tar"
    trimmed.write_bytes(data[:-1024])
    assert _read_all(trimmed, False) == (keys, None)
    # A garbage header in the middle: the sample before it may be incomplete, so it is reported, not yielded.
    headers = [i for i in range(0, len(data), 512) if data[i + 257 : i + 262] == b"ustar"]
    assert len(headers) == 3 * 8
    corrupt = bytearray(data)
    corrupt[headers[6] : headers[6] + 512] = b"\x07" * 512  # the first member of the third sample
    (tmp_path / "corrupt.tar").write_bytes(bytes(corrupt))
    got, error = _read_all(tmp_path / "corrupt.tar", False)
    assert got == keys[:1] and error is not None and error.key == keys[1] and "corrupt" in error.reason
    # Missing and non-tar files.
    for name, content in [("missing.tar", None), ("text.tar", b"hello world" * 100), ("empty.tar", b"")]:
        if content is not None:
            (tmp_path / name).write_bytes(content)
        got, error = _read_all(tmp_path / name, False)
        assert got == [] and error is not None


def test_sample_caption_reasons(tmp_path: Path) -> None:
    shard = write_shard(
        tmp_path / "s.tar",
        [
            ("a", {"txt": "café ☕".encode()}),
            ("b", {"txt": b"caf\xe9 latin-1", "json": json.dumps({"caption": "ok"}).encode()}),
            ("c", {"txt": b"   \n"}),
            ("d", {"jpg": b"xx"}),
            ("e", {"jpg": b"xx", "json": json.dumps({"caption": "from json"}).encode()}),
            ("f", {"json": b"{not json"}),
            ("g", {"json": b'{"url": "x"}'}),
        ],
    )
    outcomes = {}
    for sample in iter_samples(shard, with_images=False):
        try:
            outcomes[sample.key] = sample_caption(sample)
        except CaptionError as e:
            outcomes[sample.key] = e.reason
    assert outcomes == {
        "a": "café ☕",
        "b": CAPTION_NOT_UTF8,
        "c": EMPTY_CAPTION,
        "d": NO_CAPTION,
        "e": "from json",
        "f": INVALID_JSON,
        "g": NO_CAPTION,
    }


def test_caption_files(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_bytes(
        b'{"key": "k1", "caption": "a dog"}\n{"caption": "no key"}\n\n{"key": "k3", "caption": ""}\n'
        b'{"key": "k4"}\nnot json\n{"key": "k6", "caption": "caf\xe9"}\n'
    )
    records = list(iter_caption_records(tmp_path / "c.jsonl"))
    assert [(r.key, r.caption, r.error) for r in records] == [
        ("k1", "a dog", None),
        ("000000001", "no key", None),
        ("k3", None, EMPTY_CAPTION),
        ("k4", None, NO_CAPTION),
        ("000000005", None, INVALID_JSON),
        ("000000006", None, CAPTION_NOT_UTF8),
    ]
    (tmp_path / "c.txt").write_bytes(b"first caption\r\nsecond \xff\n\nlast")
    assert [(r.key, r.caption, r.error) for r in iter_caption_records(tmp_path / "c.txt")] == [
        ("000000000", "first caption", None),
        ("000000001", None, CAPTION_NOT_UTF8),
        ("000000002", None, EMPTY_CAPTION),
        ("000000003", "last", None),
    ]
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["x", "y"], "caption": ["a cat", None]}), tmp_path / "c.parquet")
    assert [(r.key, r.caption, r.error) for r in iter_caption_records(tmp_path / "c.parquet")] == [
        ("x", "a cat", None),
        ("y", None, NO_CAPTION),
    ]
    assert expand_caption_files(str(tmp_path)) == [tmp_path / "c.jsonl", tmp_path / "c.parquet", tmp_path / "c.txt"]
    with pytest.raises(GlipkitUsageError, match="does not exist"):
        expand_caption_files(str(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------------------------------------------------------- splits


def test_rank_and_worker_splits_are_disjoint_and_complete() -> None:
    shards = [f"s{i:03d}" for i in range(23)]
    for world_size, num_workers in itertools.product(range(1, 6), range(1, 5)):
        slices = [
            shards_for_worker(shards_for_rank(shards, rank, world_size), worker, num_workers)
            for rank in range(world_size)
            for worker in range(num_workers)
        ]
        flat = [s for part in slices for s in part]
        assert sorted(flat) == shards, (world_size, num_workers)  # each shard exactly once
        sizes = [len(part) for part in slices]
        assert max(sizes) - min(sizes) <= 1  # balanced
    assert shards_for_rank(shards[:2], 3, 4) == []


def test_rank_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    shards = list(range(10))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world_size() == (2, 4)
    assert shards_for_rank(shards) == [2, 6]
    assert shards_for_worker([2, 6]) == [2, 6]  # outside a DataLoader worker: one worker
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(GlipkitUsageError):
        rank_and_world_size()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert rank_and_world_size() == (0, 1)


def test_worker_split_inside_dataloader() -> None:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Names(IterableDataset):
        def __iter__(self):
            return iter(shards_for_worker([f"s{i}" for i in range(7)]))

    seen = list(DataLoader(Names(), batch_size=None, num_workers=2, multiprocessing_context="fork"))
    assert sorted(seen) == [f"s{i}" for i in range(7)]
    assert torch.utils.data.get_worker_info() is None


# ---------------------------------------------------------------------------------------------------------------- tables


def test_phrases_table_round_trip_and_metadata(tmp_path: Path) -> None:
    table = phrases_table(["k1", "k2"], ["a red dog", "x"], [[("red dog", 2, 9), ("a", 0, 1)], []])
    assert table.schema.equals(PHRASES_SCHEMA)
    path = write_table(tmp_path / "s.phrases.parquet", table, PHRASES_SCHEMA, "extract-phrases", {"extractor": "spacy"})
    back = read_table(path)
    assert back.to_pylist() == [
        {"key": "k1", "caption": "a red dog", "phrases": [{"text": "red dog", "start": 2, "end": 9}, {"text": "a", "start": 0, "end": 1}]},
        {"key": "k2", "caption": "x", "phrases": []},
    ]
    meta = read_metadata(path)
    assert meta["command"] == "extract-phrases" and meta["settings"] == {"extractor": "spacy"} and meta["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.phrases.parquet"]


def test_labels_schema_row(tmp_path: Path) -> None:
    row = {
        "key": "000000001",
        "caption": "a red circle",
        "phrases": [{"text": "a red circle", "start": 0, "end": 12}],
        "shard": "00000",
        "width": 320,
        "height": 200,
        "boxes": [{"x0": 1.5, "y0": 2.0, "x1": 50.25, "y1": 60.0, "score": 0.875, "phrase": 0}],
    }
    path = write_table(tmp_path / "00000.parquet", [row], LABELS_SCHEMA, "pseudo-label", {"model": "glip-t"})
    back = read_table(path)
    assert back.schema.field("boxes").type.value_type.field("phrase").type == pa.int16()
    assert back.to_pylist() == [row]


def test_atomic_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "s.phrases.parquet"
    with pytest.raises(RuntimeError):
        with AtomicParquetWriter(target, PHRASES_SCHEMA, "extract-phrases", {}, row_group_size=2) as writer:
            writer.write_rows([{"key": str(i), "caption": "c", "phrases": []} for i in range(5)])
            assert any(p.name.startswith(".s.phrases.parquet.tmp") for p in tmp_path.iterdir())
            raise RuntimeError("half-way")
    assert list(tmp_path.iterdir()) == []
    with AtomicParquetWriter(target, PHRASES_SCHEMA, "extract-phrases", {}, row_group_size=2) as writer:
        writer.write_rows([{"key": str(i), "caption": "c", "phrases": []} for i in range(5)])
    import pyarrow.parquet as pq

    assert pq.ParquetFile(target).metadata.num_rows == 5 and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_stats_merge_under_concurrency(tmp_path: Path) -> None:
    names = [f"{prefix}{i:02d}" for prefix in "abc" for i in range(15)]
    stats_writer = StatsWriter(tmp_path, names, {"command": "x"})

    def writer(prefix: str) -> None:
        for i in range(15):
            stats_writer.write(f"{prefix}{i:02d}", {"read": 2, "written": 1, "status": "done",
                                                    "skipped_by_reason": {"empty caption": 1}})

    threads = [threading.Thread(target=writer, args=(p,)) for p in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats_writer.merge()
    stats = read_stats(tmp_path)
    assert len(stats["shards"]) == 45 and stats["command"] == "x"
    assert stats["totals"]["read"] == 90 and stats["totals"]["written"] == 45
    assert stats["totals"]["skipped_by_reason"] == {"empty caption": 45}
    assert stats["totals"]["shards_by_status"] == {"done": 45}
    stats_writer.write("a00", {"read": 10, "status": "failed"})
    stats_writer.merge()
    assert read_stats(tmp_path)["totals"]["read"] == 98


# ---------------------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_samples_have_consistent_gold(tmp_path: Path) -> None:
    samples = make_samples(40, seed=3)
    assert [s.caption for s in make_samples(40, seed=3)] == [s.caption for s in samples]  # deterministic
    assert len({s.caption for s in samples}) > 30
    checked = 0
    for sample in samples:
        assert 160 <= sample.width <= 320 and 160 <= sample.height <= 320
        assert sample.objects
        for obj in sample.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= sample.width and 0 <= y0 < y1 <= sample.height
            phrase = sample.caption[obj.span[0] : obj.span[1]]
            assert phrase.lower().rstrip("s").endswith(obj.category) or phrase.lower().endswith(obj.category + "s")
            assert obj.category in CATEGORIES
        image = np.asarray(sample.render())
        assert image.shape == (sample.height, sample.width, 3)
        for obj in sample.objects:
            if obj.category in {"circle", "square", "diamond"}:  # solid at the centre
                cx, cy = int((obj.box[0] + obj.box[2]) / 2), int((obj.box[1] + obj.box[3]) / 2)
                assert np.abs(image[cy, cx].astype(int) - COLORS[obj.color]).max() <= 2
                checked += 1
    assert checked >= 5


def test_demo_shards_are_img2dataset_layout(tmp_path: Path) -> None:
    paths = write_demo_shards(tmp_path, num_shards=2, samples_per_shard=5, seed=1)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar"]
    samples = list(iter_samples(paths[1]))
    assert [s.key for s in samples] == [f"0000100{i:02d}" for i in range(5)]
    for sample in samples:
        meta = json.loads(sample.files["json"])
        image = Image.open(io.BytesIO(sample.files["jpg"]))
        assert image.format == "JPEG" and image.size == (meta["width"], meta["height"])
        assert meta["key"] == sample.key and meta["caption"] == sample.files["txt"].decode() and meta["url"]
        for obj in meta["objects"]:
            assert meta["caption"][obj["span"][0] : obj["span"][1]] == obj["phrase"]
