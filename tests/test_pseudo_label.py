"""`glipkit pseudo-label` end to end: a small random GLIP labels demo shards through the CLI; resume after SIGKILL;
torchrun with 2 CPU ranks; classes mode; the data pipeline's batches; usage errors; batch 1 == GLIP.predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import glipkit.cli.pseudo_label  # noqa: F401  (registers the command)
from glipkit.cli.app import app
from glipkit.data.images import decode_image
from glipkit.data.shards import iter_samples
from glipkit.data.tables import read_metadata
from glipkit.demo.gold import write_gold_phrases
from glipkit.demo.samples import write_demo_shards
from glipkit.engine.labelling.filters import filter_settings
from glipkit.engine.labelling.pseudo_label import PseudoLabelSettings, run_pseudo_label
from glipkit.engine.labelling.teacher_data import ImageBatch, LoaderSettings, ShardEnd, TeacherDataset
from glipkit.engine.predictor import Predictor
from glipkit.files import file_sha256
from pseudo_label_helpers import label_tables, read_rows, save_tiny_teacher, shard_keys, tiny_teacher

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--image-size", "64,96"]  # small inputs keep the tiny teacher fast; every code path is the same


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny.safetensors", tiny_tokenizer)


def invoke(*args: str):
    return CliRunner().invoke(app, ["pseudo-label", *args, *SMALL, "--no-progress"], catch_exceptions=False)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _check_rows(rows: list[dict]) -> None:
    """Valid boxes inside their image, phrase indices that exist, spans that index the caption."""
    for row in rows:
        for phrase in row["phrases"]:
            assert row["caption"][phrase["start"] : phrase["end"]] == phrase["text"]
        for box in row["boxes"]:
            assert 0 <= box["x0"] <= box["x1"] <= row["width"], (row["key"], box)
            assert 0 <= box["y0"] <= box["y1"] <= row["height"], (row["key"], box)
            assert 0 <= box["phrase"] < len(row["phrases"])
            assert 0.0 < box["score"] <= 1.0


def _same_rows(a: list[dict], b: list[dict]) -> None:
    a, b = sorted(a, key=lambda r: r["key"]), sorted(b, key=lambda r: r["key"])
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for x, y in zip(a, b):
        assert (x["caption"], x["phrases"], x["flags"], x["width"], x["height"]) == \
            (y["caption"], y["phrases"], y["flags"], y["width"], y["height"])
        assert len(x["boxes"]) == len(y["boxes"])
        for p, q in zip(x["boxes"], y["boxes"]):
            assert p["phrase"] == q["phrase"]
            assert all(abs(p[k] - q[k]) < 1e-3 for k in ("x0", "y0", "x1", "y1", "score"))


def test_cli_labels_every_sample_exactly_once(tmp_path, teacher_file, tiny_tokenizer_dir):
    shards = write_demo_shards(tmp_path / "shards", num_shards=3, samples_per_shard=5, seed=3)
    out = tmp_path / "labels"
    common = ["--shards", str(tmp_path / "shards"), "--out", str(out), "--model", str(teacher_file),
              "--tokenizer", str(tiny_tokenizer_dir), "--preset", "none", "--batch-size", "2"]
    result = invoke(*common, "--workers", "2")  # phrases extracted with spaCy inside the 2 workers
    assert result.exit_code == 0, result.output
    tables = label_tables(out)
    assert [t.name for t in tables] == ["00000.labels.parquet", "00001.labels.parquet", "00002.labels.parquet"]
    rows = read_rows(out)
    keys = shard_keys(shards)
    assert sorted(r["key"] for r in rows) == sorted(keys) and len(set(keys)) == 15
    assert all(r["shard"] == str(s) for s, t in zip(shards, tables) for r in pq.read_table(t).to_pylist())
    _check_rows(rows)
    assert sum(len(r["boxes"]) for r in rows) > 0 and all(r["phrases"] for r in rows)
    sizes = {s.key: (json.loads(s.files["json"])["width"], json.loads(s.files["json"])["height"])
             for shard in shards for s in iter_samples(shard)}
    assert all((row["width"], row["height"]) == sizes[row["key"]] for row in rows)  # original image sizes
    meta = read_metadata(tables[0])
    assert meta["command"] == "pseudo-label"
    settings = meta["settings"]
    assert settings["model_sha256"] == file_sha256(teacher_file)
    assert settings["model_bytes"] == teacher_file.stat().st_size
    assert settings["filters"]["box_threshold"] == 0.0 and settings["extraction"]["extractor"] == "spacy"
    assert settings["precision"] == "fp32" and settings["text_padding"] == "longest"
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["totals"]["read"] == stats["totals"]["written"] == stats["totals"]["labelled"] == 15
    assert stats["totals"]["failed"] == 0 and stats["totals"]["boxes"] == sum(len(r["boxes"]) for r in rows)
    assert sum(stats["summary"]["boxes_per_image_hist"].values()) == 15
    assert sum(stats["summary"]["score_hist"].values()) == stats["totals"]["boxes"]
    assert stats["summary"]["top_phrases"] and stats["summary"]["last_run"]["images_per_s"] > 0

    # Resume: finished shards are skipped; --overwrite redoes them, and the worker count changes nothing.
    again = invoke(*common, "--workers", "1")
    assert again.exit_code == 0 and "3 already done" in again.output
    redo = invoke(*common, "--workers", "0", "--overwrite")
    assert redo.exit_code == 0 and "3 labelled" in redo.output
    _same_rows(read_rows(out), rows)


def test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run(tmp_path, teacher_file, tiny_tokenizer_dir,
                                                                     tiny_tokenizer):
    shards = write_demo_shards(tmp_path / "shards", num_shards=8, samples_per_shard=2, seed=5)
    phrases = write_gold_phrases(shards, tmp_path / "phrases")
    settings = PseudoLabelSettings(phrases_dir=phrases, filters=filter_settings("none"), batch_size=2, workers=0,
                                   image_size=(64, 96))
    from glipkit.model.glip import GLIP

    model = GLIP.from_pretrained(teacher_file, tokenizer=tiny_tokenizer)
    run_pseudo_label(shards, tmp_path / "reference", model, settings)
    reference = read_rows(tmp_path / "reference")
    assert len(reference) == 16

    out = tmp_path / "labels"
    command = [sys.executable, "-m", "glipkit", "pseudo-label", "--shards", str(tmp_path / "shards"), "--out",
               str(out), "--model", str(teacher_file), "--tokenizer", str(tiny_tokenizer_dir), "--phrases",
               str(phrases), "--preset", "none", "--batch-size", "2", "--workers", "0", "--no-progress", *SMALL]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(label_tables(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    finished = label_tables(out)
    assert 2 <= len(finished) < 8, output  # killed part-way
    for table in finished:  # every table with a final name is complete and right
        _same_rows(pq.read_table(table).to_pylist(), [r for r in reference if r["shard"].endswith(table.name.split(".")[0] + ".tar")])

    result = invoke("--shards", str(tmp_path / "shards"), "--out", str(out), "--model", str(teacher_file),
                    "--tokenizer", str(tiny_tokenizer_dir), "--phrases", str(phrases), "--preset", "none",
                    "--batch-size", "2", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert f"{len(finished)} already done" in result.output
    _same_rows(read_rows(out), reference)
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]  # no partial files left behind
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["totals"]["shards"] == 8 and stats["totals"]["written"] == 16


def test_torchrun_two_cpu_ranks_split_the_shards(tmp_path, teacher_file, tiny_tokenizer_dir):
    shards = write_demo_shards(tmp_path / "shards", num_shards=5, samples_per_shard=2, seed=7)
    phrases = write_gold_phrases(shards, tmp_path / "phrases")
    out = tmp_path / "labels"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "glipkit", "pseudo-label", "--shards", str(tmp_path / "shards"), "--out", str(out),
               "--model", str(teacher_file), "--tokenizer", str(tiny_tokenizer_dir), "--phrases", str(phrases),
               "--preset", "none", "--workers", "0", "--no-progress", "--device", "cpu", *SMALL]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[rank 0/2]" in result.stdout and "[rank 1/2]" in result.stdout
    rows = read_rows(out)
    assert sorted(r["key"] for r in rows) == sorted(shard_keys(shards))  # no overlap, no gap
    _check_rows(rows)
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["totals"]["shards"] == 5 and stats["totals"]["written"] == 10
    for index, shard in enumerate(shards):  # rank r owns shards r, r+2, ...: it alone wrote them
        assert stats["shards"][shard.stem]["run"]["rank"] == index % 2
    assert stats["summary"]["last_run"]["ranks"] == 2
    assert sorted(p.name for p in (out / "_stats" / "ranks").iterdir()) == ["rank-00000.json", "rank-00001.json"]


def test_classes_mode_with_a_class_file_prompt_file_and_chunks(tmp_path, teacher_file, tiny_tokenizer_dir):
    write_demo_shards(tmp_path / "shards", num_shards=1, samples_per_shard=3, seed=9)
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\ntriangle\nstar\ntree\n")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"tree": {"prefix": "a green ", "name": "tree", "suffix": " on grass"}}))
    out = tmp_path / "labels"
    result = invoke("--shards", str(tmp_path / "shards"), "--out", str(out), "--model", str(teacher_file),
                    "--tokenizer", str(tiny_tokenizer_dir), "--prompt-mode", "classes", "--classes", str(classes),
                    "--prompt-file", str(prompts), "--chunk-size", "2", "--preset", "none", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 3
    names = {"circle", "square", "triangle", "star", "tree"}
    for row in rows:
        assert row["phrases"] and {p["text"] for p in row["phrases"]} <= names
        assert all(p["start"] == -1 and p["end"] == -1 for p in row["phrases"])
        assert all(0 <= b["phrase"] < len(row["phrases"]) for b in row["boxes"])
        assert {row["phrases"][b["phrase"]]["text"] for b in row["boxes"]} == {p["text"] for p in row["phrases"]}
    settings = read_metadata(label_tables(out)[0])["settings"]
    assert settings["class_prompts"] == ["circle. square", "triangle. star", "a green tree on grass"]
    assert settings["classes"] == ["circle", "square", "triangle", "star", "tree"]


def test_batches_depend_only_on_the_shard_not_on_the_workers(tmp_path):
    shards = write_demo_shards(tmp_path / "shards", num_shards=3, samples_per_shard=7, seed=11)
    phrases = write_gold_phrases(shards, tmp_path / "phrases")
    settings = LoaderSettings(phrases_dir=phrases, min_size=64, max_size=128, batch_size=3, bucket_window=2)

    def batches(workers: int) -> dict[str, list[list[str]]]:
        found: dict[str, list[list[str]]] = {}
        ends = []
        for item in DataLoader(TeacherDataset(shards, settings), batch_size=None, num_workers=workers):
            if isinstance(item, ImageBatch):
                assert item.images.dtype == torch.uint8 and item.images.shape[2] % 32 == 0
                ratios = [h / w for h, w in item.sizes]
                assert ratios == sorted(ratios)  # bucketed by aspect ratio within the window
                found.setdefault(item.shard, []).append([r.key for r in item.records])
            else:
                assert isinstance(item, ShardEnd) and item.status == "done" and item.read == 7
                assert found.get(item.shard) is not None  # the end comes after the shard's batches
                ends.append(item.shard)
        assert sorted(ends) == sorted(map(str, shards))
        return found

    alone, split = batches(0), batches(2)
    assert alone == split
    assert all(sum(map(len, b)) == 7 and [len(x) for x in b] == [3, 3, 1] for b in alone.values())


def test_usage_errors_are_one_line_and_exit_2(tmp_path, teacher_file, tiny_tokenizer_dir):
    write_demo_shards(tmp_path / "shards", num_shards=1, samples_per_shard=1)
    base = ["--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "out"), "--tokenizer",
            str(tiny_tokenizer_dir), "--workers", "0"]
    cases = [
        (["--model", str(teacher_file), "--prompt-mode", "classes"], "needs --classes"),
        (["--model", str(teacher_file), "--phrases", str(tmp_path / "nowhere")], "not a directory"),
        (["--model", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
        (["--model", str(teacher_file), "--classes", "dog. cat"], "--prompt-mode classes"),
        (["--model", str(teacher_file), "--image-size", "big"], "--image-size"),
        (["--model", str(teacher_file), "--shards", str(tmp_path / "none-*.tar")], "matches no files"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, ["pseudo-label", *base, *extra, "--no-progress"])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not label_tables(tmp_path / "out")


def test_job_at_batch_one_writes_exactly_what_glip_predict_returns(tmp_path, tiny_tokenizer):
    shards = write_demo_shards(tmp_path / "shards", num_shards=1, samples_per_shard=3, seed=13)
    phrases = write_gold_phrases(shards, tmp_path / "phrases")
    model = tiny_teacher(tiny_tokenizer)
    settings = PseudoLabelSettings(phrases_dir=phrases, filters=filter_settings("none"), batch_size=1, workers=0)
    run_pseudo_label(shards, tmp_path / "out", model, settings)
    rows = {r["key"]: r for r in read_rows(tmp_path / "out")}
    for sample in iter_samples(shards[0]):
        row = rows[sample.key]
        spans = [(p["start"], p["end"]) for p in row["phrases"]]
        [reference] = Predictor(model).predict(decode_image(sample.files["jpg"]), prompts=row["caption"], phrase_spans=[spans])
        assert len(reference) == len(row["boxes"]) > 0
        boxes = torch.tensor([[b["x0"], b["y0"], b["x1"], b["y1"]] for b in row["boxes"]])
        assert torch.equal(boxes, reference.boxes)  # float32 both: bit-identical
        assert torch.equal(torch.tensor([b["score"] for b in row["boxes"]]), reference.scores)
        assert [b["phrase"] for b in row["boxes"]] == reference.labels.tolist()
