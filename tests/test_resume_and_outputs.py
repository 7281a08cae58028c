"""Outputs that are never confused with someone else's files: resume by metadata, checked `--phrases` joins, missing
shards, concurrent runs on one --out, an img2dataset folder as --out, and label tables in an S3 bucket (moto)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import glipkit.cli.extract_phrases  # noqa: F401  (registers the command)
import glipkit.cli.pseudo_label  # noqa: F401
from glipkit.cli.app import app
from glipkit.data.pseudo import label_tables as source_tables
from glipkit.data.shards import shard_url, write_shard
from glipkit.data.tables import PHRASES_SCHEMA, write_table
from glipkit.demo.gold import write_gold_phrases
from glipkit.demo.samples import write_demo_shards
from glipkit.engine.labelling.filters import filter_settings
from glipkit.engine.labelling.pseudo_label import PseudoLabelSettings, run_pseudo_label
from pseudo_label_helpers import label_tables, read_rows, save_tiny_teacher, tiny_teacher

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "64,96", "--preset", "none", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny.safetensors", tiny_tokenizer)


def label(*args: str):
    return CliRunner().invoke(app, ["pseudo-label", *args, *SMALL], catch_exceptions=False)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _settings(phrases: Path | None = None) -> PseudoLabelSettings:
    return PseudoLabelSettings(phrases_dir=phrases, filters=filter_settings("none"), batch_size=2, workers=0,
                               image_size=(64, 96))


def _by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


def _assert_same(rows: dict[str, dict], reference: dict[str, dict]) -> None:
    """The same keys, captions, phrases and boxes (coordinates and scores within 1e-3: thread counts differ)."""
    assert sorted(rows) == sorted(reference)
    for key, row in rows.items():
        ref = reference[key]
        assert (row["caption"], row["phrases"]) == (ref["caption"], ref["phrases"])
        assert len(row["boxes"]) == len(ref["boxes"])
        for p, q in zip(row["boxes"], ref["boxes"]):
            assert p["phrase"] == q["phrase"]
            assert all(abs(p[k] - q[k]) < 1e-3 for k in ("x0", "y0", "x1", "y1", "score"))


def test_rerun_with_other_settings_refuses_and_foreign_files_are_never_done(tmp_path, teacher_file,
                                                                           tiny_tokenizer_dir):
    write_demo_shards(tmp_path / "shards", num_shards=2, samples_per_shard=2, seed=1)
    phrases = write_gold_phrases(sorted((tmp_path / "shards").glob("*.tar")), tmp_path / "phrases")
    out = tmp_path / "labels"
    common = ["--shards", str(tmp_path / "shards"), "--out", str(out), "--model", str(teacher_file), "--tokenizer",
              str(tiny_tokenizer_dir), "--phrases", str(phrases)]
    assert label(*common).exit_code == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in label_tables(out)}

    # Same command, same settings (from another working directory): done.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        again = label("--shards", "shards", "--out", "labels", *common[4:])
    finally:
        os.chdir(cwd)
    assert again.exit_code == 0 and "2 already done" in again.output, again.output

    # Other settings: one line naming them, exit 2, nothing touched.
    other = label(*common, "--box-threshold", "0.3", "--batch-size", "2")
    assert other.exit_code == 2, other.output
    line = other.output.strip()
    assert "\n" not in line and "filters.box_threshold: 0.0 here 0.3" in line and "batch_size: 1 here 2" in line
    assert "--overwrite" in line and "1 more tables differ" in line
    assert {p.name: p.stat().st_mtime_ns for p in label_tables(out)} == mtimes
    redo = label(*common, "--box-threshold", "0.3", "--overwrite")
    assert redo.exit_code == 0 and "2 labelled" in redo.output
    assert all(json.loads(pq.read_schema(p).metadata[b"glipkit.settings"])["filters"]["box_threshold"] == 0.3
               for p in label_tables(out))

    # A foreign file under the output name (no glipkit metadata) and a phrases table there: never taken as done.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"key": ["x"]}), foreign / "00000.labels.parquet")
    write_table(foreign / "00001.labels.parquet", [], PHRASES_SCHEMA, "extract-phrases", {})
    result = label(*common[:2], "--out", str(foreign), *common[4:])
    assert result.exit_code == 2 and "not written by glipkit pseudo-label" in result.output
    assert "1 more tables differ" in result.output

    # A label table of an older glipkit (`<shard>.parquet`): rename it, said in one line.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (out / "00000.labels.parquet").rename(legacy / "00000.parquet")
    result = label(*common[:2], "--out", str(legacy), *common[4:])
    assert result.exit_code == 2 and "rename it to 00000.labels.parquet" in result.output


def test_phrases_of_other_shards_fail_the_shard(tmp_path, tiny_tokenizer, teacher_file, tiny_tokenizer_dir):
    ours = write_demo_shards(tmp_path / "ours", num_shards=2, samples_per_shard=2, seed=1)
    theirs = write_demo_shards(tmp_path / "theirs", num_shards=2, samples_per_shard=2, seed=2)  # same names and keys
    model = tiny_teacher(tiny_tokenizer)

    # Phrases made from the other shard set: refused by their recorded input.
    report = run_pseudo_label(ours, tmp_path / "a", model, _settings(write_gold_phrases(theirs, tmp_path / "pt")))
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert all(f"was made from {shard_url(t)}, not {shard_url(o)}" in r.error
               for r, o, t in zip(report.results, ours, theirs))
    assert label_tables(tmp_path / "a") == []

    # A table that claims our shard as its input but holds other captions for the same keys: refused by caption.
    mixed = tmp_path / "mixed"
    write_gold_phrases(theirs, mixed)
    for shard, table in zip(ours, sorted(mixed.glob("*.phrases.parquet"))):
        rows = pq.read_table(table).to_pylist()
        write_table(table, rows, PHRASES_SCHEMA, "extract-phrases", {"extractor": "gold", "input": shard_url(shard)})
    report = run_pseudo_label(ours, tmp_path / "b", model, _settings(mixed))
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert "has another caption for key" in report.results[0].error and label_tables(tmp_path / "b") == []

    # Through the CLI: exit code 1, each shard listed with its reason; the right phrases label everything.
    result = label("--shards", str(tmp_path / "ours"), "--out", str(tmp_path / "c"), "--model", str(teacher_file),
                   "--tokenizer", str(tiny_tokenizer_dir), "--phrases", str(tmp_path / "pt"))
    assert result.exit_code == 1 and "2 shards not done" in result.output and "was made from" in result.output
    report = run_pseudo_label(ours, tmp_path / "d", model, _settings(write_gold_phrases(ours, tmp_path / "po")))
    assert [r.status for r in report.results] == ["done", "done"] and len(read_rows(tmp_path / "d")) == 4


def test_missing_shards_of_a_brace_range_exit_1(tmp_path, teacher_file, tiny_tokenizer_dir):
    write_demo_shards(tmp_path / "shards", num_shards=2, samples_per_shard=1, seed=1)
    spec = str(tmp_path / "shards" / "{00000..00003}.tar")
    result = label("--shards", spec, "--out", str(tmp_path / "labels"), "--model", str(teacher_file),
                   "--tokenizer", str(tiny_tokenizer_dir), "--extractor", "ngrams")
    assert result.exit_code == 1, result.output
    assert "2 labelled" in result.output and "2 shards not done (exit code 1)" in result.output
    assert all(f"0000{i}.tar" in result.output.split("not done")[1] for i in (2, 3))
    phrases = CliRunner().invoke(app, ["extract-phrases", "--shards", spec, "--out", str(tmp_path / "phrases"),
                                       "--extractor", "ngrams", "--workers", "1", "--no-progress"])
    assert phrases.exit_code == 1 and "2 inputs not done" in phrases.output and "00003.tar" in phrases.output


def test_two_concurrent_runs_on_one_out_label_each_shard_once(tmp_path, teacher_file, tiny_tokenizer_dir,
                                                              tiny_tokenizer):
    shards = write_demo_shards(tmp_path / "shards", num_shards=3, samples_per_shard=2, seed=4)
    phrases = write_gold_phrases(shards, tmp_path / "phrases")
    run_pseudo_label(shards, tmp_path / "reference", tiny_teacher(tiny_tokenizer), _settings(phrases))
    out = tmp_path / "labels"
    command = [sys.executable, "-m", "glipkit", "pseudo-label", "--shards", str(tmp_path / "shards"), "--out",
               str(out), "--model", str(teacher_file), "--tokenizer", str(tiny_tokenizer_dir), "--phrases",
               str(phrases), "--batch-size", "2", *SMALL]
    # One run in another process; this one starts while the other holds its claims.
    other = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while other.poll() is None and time.monotonic() < deadline and not (
            (out / "_claims").is_dir() and any((out / "_claims").iterdir())):
        time.sleep(0.02)
    here = CliRunner().invoke(app, command[3:], catch_exceptions=False)
    outputs = [other.communicate(timeout=240)[0], here.output]
    assert [other.returncode, here.exit_code] == [0, 0], outputs
    _assert_same(_by_key(read_rows(out)), _by_key(read_rows(tmp_path / "reference")))
    assert not list((out / "_claims").iterdir()) and not [p for p in out.rglob(".*") if ".tmp-" in p.name]


def _img2dataset_folder(folder: Path) -> list[str]:
    """An img2dataset 1.47 output folder: 00000.tar (+ .json with url and original sizes), 00000.parquet, and
    00000_stats.json; returns the keys."""
    keys, samples, meta_rows = [], [], []
    for i, (w, h) in enumerate([(96, 64), (80, 80)]):
        key = f"00000{i:04d}"
        buffer = io.BytesIO()
        Image.new("RGB", (w, h), (200, 30 * i, 40)).save(buffer, format="JPEG")
        meta = {"url": f"http://example.com/{i}.jpg", "caption": f"a red square number {i}", "key": key,
                "status": "success", "width": w, "height": h, "original_width": w * 4, "original_height": h * 4}
        samples.append((key, {"jpg": buffer.getvalue(), "txt": meta["caption"].encode(),
                              "json": json.dumps(meta).encode()}))
        meta_rows.append(meta)
        keys.append(key)
    write_shard(folder / "00000.tar", samples)
    pq.write_table(pa.Table.from_pylist(meta_rows), folder / "00000.parquet")
    (folder / "00000_stats.json").write_text(json.dumps({"count": 2, "successes": 2}))
    return keys


def test_img2dataset_folder_as_out_labels_everything_and_keeps_its_files(tmp_path, teacher_file,
                                                                          tiny_tokenizer_dir):
    folder = tmp_path / "i2d"
    folder.mkdir()
    keys = _img2dataset_folder(folder)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    common = ["--shards", str(folder), "--out", str(folder), "--model", str(teacher_file), "--tokenizer",
              str(tiny_tokenizer_dir), "--extractor", "ngrams"]
    result = label(*common)
    assert result.exit_code == 0 and "1 labelled" in result.output, result.output
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name in before} \
        == before
    rows = pq.read_table(folder / "00000.labels.parquet").to_pylist()
    assert [r["key"] for r in rows] == keys
    assert [(r["url"], r["width"], r["height"], r["original_width"], r["original_height"]) for r in rows] == [
        ("http://example.com/0.jpg", 96, 64, 384, 256), ("http://example.com/1.jpg", 80, 80, 320, 320)]
    assert {r["shard"] for r in rows} == {str((folder / "00000.tar").resolve())}
    assert source_tables(folder) == [folder / "00000.labels.parquet"]  # train-student's reader: not img2dataset's
    again = label(*common)
    assert again.exit_code == 0 and "1 already done" in again.output, again.output


# ---------------------------------------------------------------------------------------------------- S3 (moto)


@pytest.fixture()
def s3(moto_s3):
    return moto_s3


def _bucket_rows(fs, prefix: str) -> list[dict]:
    rows = []
    for name in sorted(fs.find(prefix)):
        if name.endswith(".labels.parquet"):
            with fs.open(name, "rb") as handle:
                rows.extend(pq.read_table(handle).to_pylist())
    return rows


def test_s3_in_and_out_sigkill_then_rerun_gives_the_rows_of_an_uninterrupted_run(tmp_path, s3, teacher_file,
                                                                        tiny_tokenizer_dir, tiny_tokenizer):
    fs, env = s3
    shards = write_demo_shards(tmp_path / "shards", num_shards=6, samples_per_shard=2, seed=6)
    phrases = write_gold_phrases(shards, tmp_path / "phrases")
    reference = _by_key(read_rows(run_pseudo_label(shards, tmp_path / "reference", tiny_teacher(tiny_tokenizer),
                                                   _settings(phrases)).out_dir))
    fs.put(str(tmp_path / "shards") + "/", "bucket/shards/", recursive=True)  # shards read from the bucket too
    remote_phrases = write_gold_phrases([f"s3://bucket/shards/{Path(s).name}" for s in shards],
                                        tmp_path / "remote-phrases")
    command = [sys.executable, "-m", "glipkit", "pseudo-label", "--shards", "s3://bucket/shards/", "--out",
               "s3://bucket/labels", "--model", str(teacher_file), "--tokenizer", str(tiny_tokenizer_dir),
               "--phrases", str(remote_phrases), "--batch-size", "2", *SMALL]
    process = subprocess.Popen(command, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        fs.invalidate_cache()
        if len([n for n in fs.find("bucket/labels") if n.endswith(".labels.parquet")]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    fs.invalidate_cache()
    finished = [n for n in fs.find("bucket/labels") if n.endswith(".labels.parquet")]
    assert 2 <= len(finished) < 6, output
    assert not [n for n in fs.find("bucket/labels") if ".tmp" in n]  # only whole objects are visible
    partial = _by_key(_bucket_rows(fs, "bucket/labels"))
    _assert_same(partial, {k: reference[k] for k in partial})
    assert len(partial) == 2 * len(finished)

    rerun = CliRunner().invoke(app, command[3:], catch_exceptions=False)  # here: the environment points at moto
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(finished)} already done" in rerun.output  # resume read the objects' metadata
    fs.invalidate_cache()
    labelled = _by_key(_bucket_rows(fs, "bucket/labels"))
    _assert_same(labelled, reference)
    assert {row["shard"] for row in labelled.values()} == {f"s3://bucket/shards/{Path(s).name}" for s in shards}
    stats = json.loads(fs.cat("bucket/labels/_stats.json"))
    assert stats["totals"]["shards"] == 6 and stats["totals"]["written"] == 12
    assert not [n for n in fs.find("bucket/labels") if "/_claims/" in n]  # the killed run's claims were taken over


def test_a_stale_claim_is_taken_over_by_exactly_one_of_two_runs(tmp_path):
    from glipkit.engine.claims import Claims, claim_name
    from glipkit.engine.output_dir import OutputDir

    out = OutputDir(tmp_path / "out")
    out.makedirs()
    crashed = Claims(out, "pseudo-label", stale_after_s=60)
    assert crashed.acquire("00000.labels.parquet") is None
    path = out.local_path(claim_name("00000.labels.parquet"))
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    content = json.loads(path.read_text())
    path.write_text(json.dumps({**content, "time": time.time() - 3600, "pid": 2 ** 22 + 12345}))  # dead, old

    first, second = Claims(out, "pseudo-label", stale_after_s=60), Claims(out, "pseudo-label", stale_after_s=60)
    stale = first.holder("00000.labels.parquet")
    assert first.is_stale(stale) and second.is_stale(stale)
    # Both read the same stale claim; the first takes it over, the second must not remove the first's fresh claim.
    assert out.remove_if_token(claim_name("00000.labels.parquet"), stale["token"])
    assert first.acquire("00000.labels.parquet") is None
    assert not out.remove_if_token(claim_name("00000.labels.parquet"), stale["token"])
    assert json.loads(path.read_text())["token"] == first.held["00000.labels.parquet"]  # the fresh claim stays

    # A claim left empty by a run killed while creating it goes stale by its file time, not never.
    path.write_text("")
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert second.is_stale(second.holder("00000.labels.parquet"))
