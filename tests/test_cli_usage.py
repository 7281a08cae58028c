"""The command line as a new user meets it: wrong input is one `error:` line and exit 2 before any model loads
(nothing written), help fits 80 columns with every flag name whole, batch logs get progress lines, and
`glipkit demo` runs the main job."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from glipkit.cli.app import _register_commands, app
from glipkit.demo.samples import write_demo_shards
from glipkit.text.class_list import parse_class_list

TINY = "preset:glip-tiny-test"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli():
    _register_commands()
    runner = CliRunner()
    return lambda args, env=None: runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_demo_shards(tmp_path_factory.mktemp("shards"), num_shards=2, samples_per_shard=2,
                             min_size=64, max_size=96)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "shapes.png"
    Image.new("RGB", (80, 64), (200, 30, 30)).save(path)
    return path


def _one_error_line(result, *needles: str) -> str:
    """The result is exit 2 with exactly one stderr line, `error: ...`, holding every needle; no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_classes_that_look_like_a_file_must_be_one(cli, shards, image, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "labels"
    result = cli(["pseudo-label", "--shards", shards[0], "--out", out, "--model", TINY, "--tokenizer",
                  tiny_tokenizer_dir, "--prompt-mode", "classes", "--classes", "nothere.txt", "--no-progress"])
    _one_error_line(result, "--classes nothere.txt", "no such file")
    assert not out.exists()
    result = cli(["predict", image, "--classes", "dir/nothere", "--model", TINY])
    _one_error_line(result, "dir/nothere", "no such file")
    bad = tmp_path / "classes.json"
    bad.write_text('["dog", "cat"')
    _one_error_line(cli(["predict", image, "--classes", bad, "--model", TINY]), str(bad), "not valid JSON")


def test_one_classes_syntax_everywhere(cli, image, confident_checkpoint, tiny_tokenizer_dir, tmp_path):
    names = ["flower", "road", "field"]
    assert parse_class_list("flower. road. field") == parse_class_list("flower, road, field") == names
    assert parse_class_list("flower.road,field") == names
    listed = tmp_path / "classes.txt"
    listed.write_text("flower\nroad\nfield\n")
    assert parse_class_list(str(listed)) == names
    result = cli(["predict", image, image, "--classes", "flower. road. field", "--model", confident_checkpoint,
                  "--tokenizer", tiny_tokenizer_dir, "--device", "cpu", "--box-threshold", "0", "--json", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 and all(r["image"] == str(image) for r in records)
    assert len(records[0]["boxes"]) == len(records[0]["scores"]) == len(records[0]["phrases"]) > 0
    assert set(records[0]["phrases"]) <= set(names) and len(set(records[0]["phrases"])) > 1  # three classes


def _model_commands(shards, image, tmp_path, tokenizer):
    """(name, arguments) of each command that loads a model, all valid but for what the test adds."""
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    common = ["--model", TINY, "--tokenizer", tokenizer]
    return {
        "pseudo-label": ["pseudo-label", "--shards", shards[0], "--no-progress", *common],
        "predict": ["predict", image, "--prompt", "a dog", *common],
        "eval": ["eval", "coco", "--ann", ann, "--images", tmp_path, "--no-progress", *common],
        "train-student": ["train-student", "--steps", "1", "--gold", ann, "--gold-images", tmp_path,
                          "--no-progress", *common],
        "demo": ["demo", "--no-progress", *common],
    }


def test_a_device_this_machine_lacks_is_one_line(cli, shards, image, tiny_tokenizer_dir, tmp_path):
    commands = _model_commands(shards, image, tmp_path, tiny_tokenizer_dir)
    for name, args in commands.items():
        out = ["--draw" if name == "predict" else "--out", tmp_path / f"out-{name}"]
        _one_error_line(cli([*args, *out, "--device", "gpu"]), "--device 'gpu' is not a device")
        if not torch.cuda.is_available():
            _one_error_line(cli([*args, *out, "--device", "cuda"]), "--device cuda", "--device cpu")
        assert not (tmp_path / f"out-{name}").exists(), name


def test_an_output_that_cannot_be_a_directory_is_one_line(cli, shards, image, tiny_tokenizer_dir, tmp_path):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    commands = _model_commands(shards, image, tmp_path, tiny_tokenizer_dir)
    commands["extract-phrases"] = ["extract-phrases", "--shards", shards[0], "--extractor", "ngrams"]
    for name, args in commands.items():
        flag = "--draw" if name == "predict" else "--out"
        _one_error_line(cli([*args, "--device", "cpu", flag, taken] if name != "extract-phrases" else
                            [*args, flag, taken]), f"{flag} {taken} is a file")
        for unwritable in ("/proc/glipkit-test/out", "/sys/glipkit-test"):
            if Path(unwritable).parent.is_dir():
                line = _one_error_line(cli([*args, flag, unwritable]), unwritable, "cannot write")
                assert "No such file" not in line
    assert taken.read_text() == "keep me"


def test_missing_checkpoint_answers_before_importing_torch(tmp_path):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "glipkit", "models", "convert", "MISSING.pth",
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    assert result.returncode == 2 and result.stderr.strip() == "error: checkpoint not found: MISSING.pth"
    assert seconds < 4, seconds  # importing torch alone takes longer on this machine
    assert not (tmp_path / "out.safetensors").exists()


def test_an_unquoted_glob_gets_a_hint(cli, shards, tmp_path):
    result = cli(["pseudo-label", "--shards", *shards, "--out", tmp_path / "labels"])
    _one_error_line(result, "unexpected extra argument", "quote globs")
    _one_error_line(cli(["pseudo-label", "--shards", shards[0], "--out", tmp_path / "x", "--max-boxes", "-1"]),
                    "--max-boxes")


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_help_fits_80_columns_with_every_flag_whole(cli):
    import typer

    root = typer.main.get_command(app)
    seen = 0
    for path, command in _commands(root):
        result = cli([*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, path
        assert "<bool>" not in result.stdout and "…" not in result.stdout, path
        for param in command.params:
            for name in [*param.opts, *param.secondary_opts]:
                if name.startswith("--"):
                    assert any(name in line.split() for line in lines), (path, name)
        seen += 1
    assert seen >= 10
    help_lines = cli(["pseudo-label", "--help"], env={"COLUMNS": "80"}).stdout.splitlines()
    assert len(help_lines) < 140  # 255 before the panels
    panels = [line.split("─ ")[1].split(" ")[0] for line in help_lines if line.startswith("╭─ ")]
    assert panels == ["Input", "Model", "Phrases", "Filters", "Speed", "Output", "Options"]
    assert any("--max-boxes INT" in line and "(default 100; 0 = no limit)" in line for line in help_lines)


def test_batch_logs_get_a_line_per_shard(cli, shards, confident_checkpoint, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "labels"
    result = cli(["pseudo-label", "--shards", shards[0].parent, "--out", out, "--model", confident_checkpoint,
                  "--tokenizer", tiny_tokenizer_dir, "--device", "cpu", "--workers", "0", "--extractor", "ngrams",
                  "--ngram-max-n", "2",                  "--preset", "none", "--box-threshold", "0.52"], env={"GLIPKIT_PROGRESS_SECONDS": "3600"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("pseudo-label: ")]
    assert [line.split(",")[0] for line in lines] == ["pseudo-label: 0/2 shards", "pseudo-label: 1/2 shards",
                                                      "pseudo-label: 2/2 shards"]
    assert "4 images" in lines[-1] and "elapsed 0:00:" in lines[-1] and "ETA" in lines[1]
    # top_phrases counts images where a phrase got a box; the rate divides by the images that have the phrase
    # (exact here: each shard has fewer than 50 phrases, the per-shard lists)
    summary = json.loads((out / "_stats.json").read_text())["summary"]
    rates = summary["top_phrases_grounding_rate"]
    assert rates and set(rates) == set(summary["top_phrases"])
    rows = [row for table in sorted(out.glob("*.parquet")) for row in pq.read_table(table).to_pylist()]
    for phrase, rate in rates.items():
        having = [r for r in rows if phrase in {p["text"].lower() for p in r["phrases"]}]
        grounded = [r for r in having if phrase in {r["phrases"][b["phrase"]]["text"].lower() for b in r["boxes"]}]
        assert rate == round(len(grounded) / len(having), 4) and summary["top_phrases"][phrase] == len(grounded)
    assert min(rates.values()) < 1  # at --box-threshold 0.52 some phrases of an image get no box

    captions = tmp_path / "captions.txt"
    captions.write_text("a red dog\na blue car\n")
    result = cli(["extract-phrases", "--captions", captions, "--out", tmp_path / "phrases", "--extractor", "ngrams"])
    assert result.exit_code == 0, result.output
    assert "extract-phrases: 1/1 files" in result.stderr and "shards" not in result.stderr


def test_demo_runs_the_main_job(cli, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "demo"
    result = cli(["demo", "--model", TINY, "--tokenizer", tiny_tokenizer_dir, "--out", out, "--device", "cpu",
                  "--shards", "1", "--samples", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "shards").glob("*.tar"))) == 1
    phrases = pq.read_table(next((out / "phrases").glob("*.phrases.parquet")))
    labels = pq.read_table(next((out / "labels").glob("*.parquet")))
    assert phrases.num_rows == labels.num_rows == 3
    assert sum(len(p) for p in phrases.column("phrases").to_pylist()) > 0
    assert f"labels:  {out / 'labels'} (3 images" in result.stdout
    gallery = (out / "gallery" / "index.html")
    report = json.loads((out / "report" / "report.json").read_text())
    assert gallery.is_file() and str(gallery) in result.stdout
    assert report and (out / "report" / "report.html").is_file()


def test_the_eta_counts_images_before_the_first_shard_ends(cli, confident_checkpoint, tiny_tokenizer_dir, tmp_path):
    # img2dataset writes <stem>_stats.json beside each tar; its `successes` sizes the shard before it is read.
    folder = tmp_path / "i2d"
    shards = write_demo_shards(folder, num_shards=2, samples_per_shard=4, min_size=64, max_size=96)
    for shard in shards:
        (folder / f"{shard.stem}_stats.json").write_text(json.dumps({"count": 5, "successes": 4}))
    result = cli(["pseudo-label", "--shards", folder, "--out", tmp_path / "labels", "--model", confident_checkpoint,
                  "--tokenizer", tiny_tokenizer_dir, "--device", "cpu", "--workers", "0", "--extractor", "ngrams",
                  "--ngram-max-n", "2", "--batch-size", "2", "--image-size", "64"],
                 env={"GLIPKIT_PROGRESS_SECONDS": "0"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("pseudo-label: 0/2 shards")]
    # The line after the first batch of 2 images: 6 of 8 images left at the rate so far, no shard finished yet.
    first = next(line for line in lines if "2 images (" in line)
    rate = float(re.search(r"2 images \(([\d.]+)/s\)", first).group(1))
    minutes, seconds = re.search(r"ETA 0:(\d\d):(\d\d)", first).groups()
    assert abs(int(minutes) * 60 + int(seconds) - 6 / rate) <= 1.5


def test_the_out_check_survives_another_rank_removing_the_new_directory(tmp_path, monkeypatch):
    from glipkit.engine import checks

    out, real, calls = tmp_path / "a" / "b", checks.tempfile.TemporaryFile, []

    def racing(*args, **kwargs):
        calls.append(kwargs["dir"])
        if len(calls) == 1:  # the other rank's check removes the directories it made, between our mkdir and file
            out.rmdir()
            out.parent.rmdir()
        return real(*args, **kwargs)

    monkeypatch.setattr(checks.tempfile, "TemporaryFile", racing)
    checks.check_out_dir(out)
    assert calls == [out, out] and not (tmp_path / "a").exists()
