"""A labelled run for the show / report / export tests: demo shards labelled by the tiny teacher through the CLI."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import glipkit.cli.commands  # noqa: F401  (registers every command)
from glipkit.cli.app import app
from glipkit.demo.gold import write_gold_phrases
from glipkit.demo.samples import CATEGORIES, write_demo_shards
from pseudo_label_helpers import save_tiny_teacher


def cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def labelled_run(root: Path, tokenizer, tokenizer_dir: Path, mode: str = "caption", shards: int = 2,
                 samples: int = 4) -> Path:
    """Label `shards` demo shards of `samples` images (64-96 px) into root/labels; returns that folder."""
    write_demo_shards(root / "shards", num_shards=shards, samples_per_shard=samples, seed=5, min_size=64,
                      max_size=96)
    teacher = root / "tiny.safetensors"
    if not teacher.exists():
        save_tiny_teacher(teacher, tokenizer)
    if mode == "caption":
        prompts = ["--phrases", str(write_gold_phrases(sorted((root / "shards").glob("*.tar")), root / "phrases"))]
    else:
        prompts = ["--prompt-mode", "classes", "--classes", ". ".join(CATEGORIES)]
    out = root / f"labels-{mode}"
    result = cli("pseudo-label", "--shards", str(root / "shards"), "--out", str(out), "--model", str(teacher),
                 "--tokenizer", str(tokenizer_dir), *prompts, "--preset", "none", "--box-threshold", "0.05",
                 "--max-boxes", "6", "--workers", "0", "--image-size", "64,96", "--no-progress")
    assert result.exit_code == 0, result.output
    return out
