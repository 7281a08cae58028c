"""Caption records (key, caption or the reason there is none) from tar shards or caption files.

Caption files: `.jsonl` (objects with `caption` and optionally `key`), `.parquet` (columns `caption` and
optionally `key`), `.txt` (one caption a line). Without a key a record is keyed by its 0-based line or row
number, zero-padded to 9 digits like img2dataset keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator

from glipkit.data.shards import (
    CAPTION_NOT_UTF8,
    EMPTY_CAPTION,
    INVALID_JSON,
    NO_CAPTION,
    CaptionError,
    PathKind,
    ShardReadError,
    ShardSource,
    expand_paths,
    iter_samples,
    sample_caption,
    source_name,
)
from glipkit.data.streams import is_pipe, local_path, open_stream
from glipkit.errors import GlipkitUsageError

CAPTION_FILE_SUFFIXES = (".jsonl", ".parquet", ".txt")
CAPTION_FILES = PathKind("caption file", "caption files", CAPTION_FILE_SUFFIXES)


@dataclass(frozen=True)
class CaptionRecord:
    """One sample's caption, or `caption=None` and the reason it could not be used."""

    key: str
    caption: str | None
    error: str | None = None


def is_caption_file(path: str | os.PathLike) -> bool:
    return not is_pipe(path) and source_name(path).lower().endswith(CAPTION_FILE_SUFFIXES)


def expand_caption_files(spec: str | os.PathLike) -> list[ShardSource]:
    """Caption files named by a path spec (`--captions`, see data/shards.expand_paths); a missing file or one of
    an unknown type is a usage error."""
    paths = expand_paths(spec, CAPTION_FILES)
    unknown = [p for p in paths if not is_caption_file(p)]
    if unknown:
        raise GlipkitUsageError(f"{unknown[0]}: caption files must be .jsonl, .parquet or .txt")
    return paths


def iter_caption_records(path: str | os.PathLike) -> Iterator[CaptionRecord]:
    """Caption records of a caption file (by its suffix) or else a tar shard (images are not read), in file
    order; local or a URL.

    A damaged input raises ShardReadError after the records before the damage were yielded.
    """
    name = source_name(path).lower()
    if not is_caption_file(path):
        yield from _shard_records(path)
    elif name.endswith(".jsonl"):
        yield from _jsonl_records(path)
    elif name.endswith(".parquet"):
        yield from _parquet_records(path)
    else:
        yield from _txt_records(path)


def _shard_records(path: str | os.PathLike) -> Iterator[CaptionRecord]:
    for sample in iter_samples(path, with_images=False, extensions=("txt", "json")):
        try:
            yield CaptionRecord(sample.key, sample_caption(sample))
        except CaptionError as e:
            yield CaptionRecord(sample.key, None, e.reason)


def _checked(key: str, caption: object) -> CaptionRecord:
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            return CaptionRecord(key, None, CAPTION_NOT_UTF8)
    if not isinstance(caption, str):
        return CaptionRecord(key, None, NO_CAPTION)
    if not caption.strip():
        return CaptionRecord(key, None, EMPTY_CAPTION)
    return CaptionRecord(key, caption)


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    try:
        handle = open_stream(path)
    except OSError as e:
        raise ShardReadError(path, f"cannot open: {e.strerror or e}") from None
    with handle:
        try:
            for number, line in enumerate(handle):
                yield number, line.rstrip(b"\r\n")
        except OSError as e:
            raise ShardReadError(path, f"read error: {e}") from None


def _jsonl_records(path: str | os.PathLike) -> Iterator[CaptionRecord]:
    for number, line in _lines(path):
        default_key = f"{number:09d}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield CaptionRecord(default_key, None, CAPTION_NOT_UTF8)
            continue
        except ValueError:
            yield CaptionRecord(default_key, None, INVALID_JSON)
            continue
        if not isinstance(obj, dict):
            yield CaptionRecord(default_key, None, INVALID_JSON)
            continue
        key = obj.get("key")
        yield _checked(str(key) if key is not None else default_key, obj.get("caption"))


def _txt_records(path: str | os.PathLike) -> Iterator[CaptionRecord]:
    for number, line in _lines(path):
        key = f"{number:09d}"
        try:
            yield _checked(key, line.decode("utf-8"))
        except UnicodeDecodeError:
            yield CaptionRecord(key, None, CAPTION_NOT_UTF8)


def _parquet_records(path: str | os.PathLike) -> Iterator[CaptionRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    local = local_path(path)
    try:
        if local is None:
            import fsspec

            parquet = pq.ParquetFile(fsspec.open(str(path), "rb").open())  # Parquet needs a seekable file
        else:
            parquet = pq.ParquetFile(local)
    except (OSError, pa.ArrowException) as e:
        raise ShardReadError(path, f"not a readable Parquet file: {e}") from None
    names = parquet.schema_arrow.names
    if "caption" not in names:
        raise ShardReadError(path, f"no 'caption' column (columns: {', '.join(names)})")
    columns = ["caption"] + (["key"] if "key" in names else [])
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=8192, columns=columns):
            data = batch.to_pydict()
            keys = data.get("key") or [None] * batch.num_rows
            for key, caption in zip(keys, data["caption"]):
                yield _checked(str(key) if key is not None else f"{row:09d}", caption)
                row += 1
    except (OSError, pa.ArrowException) as e:
        raise ShardReadError(path, f"Parquet read error: {e}", samples_read=row) from None
