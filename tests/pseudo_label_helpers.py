"""Shared pieces of the pseudo-label tests: a tiny teacher checkpoint, demo shards, gold phrase tables, reading rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch

from glipkit.data.shards import iter_samples
from glipkit.data.tables import LABELS_SUFFIX
from glipkit.model.config import glip_tiny_test
from glipkit.model.glip import GLIP


def tiny_teacher(tokenizer) -> GLIP:
    """The tiny random GLIP with the prior bias removed so that it produces boxes (scores above 0.05)."""
    torch.manual_seed(0)
    model = GLIP(glip_tiny_test(), tokenizer=tokenizer).eval()
    model.head.bias0.data.fill_(0.0)
    return model


def save_tiny_teacher(path: Path, tokenizer) -> Path:
    tiny_teacher(tokenizer).save_pretrained(path)
    return path


def shard_keys(shards) -> list[str]:
    return [sample.key for shard in shards for sample in iter_samples(shard, with_images=False)]


def label_tables(out_dir: Path) -> list[Path]:
    """The `<shard>.labels.parquet` tables of a pseudo-label output folder."""
    return sorted(p for p in Path(out_dir).glob(f"*{LABELS_SUFFIX}") if not p.name.startswith((".", "_")))


def read_rows(out_dir: Path) -> list[dict]:
    rows = []
    for path in label_tables(out_dir):
        rows.extend(pq.read_table(path).to_pylist())
    return rows
