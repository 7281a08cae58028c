"""Parquet tables between commands (ARCHITECTURE.md "Data contracts"): schemas, atomic writer, reader, _stats.json.

Every table file is written under a hidden temporary name in its final directory, fsynced and renamed, so a
file with the final name is always complete. Its key-value metadata holds `glipkit.version`,
`glipkit.command` and `glipkit.settings` (JSON).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from glipkit import __version__

PHRASE_TYPE = pa.struct([("text", pa.string()), ("start", pa.int32()), ("end", pa.int32())])
BOX_TYPE = pa.struct(
    [
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("score", pa.float32()),
        ("phrase", pa.int16()),  # index into the row's `phrases`
    ]
)

# extract-phrases: one row per sample.
PHRASES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("phrases", pa.list_(PHRASE_TYPE), nullable=False),
    ]
)

# pseudo-label: one row per image; boxes are absolute pixel xyxy in the original image.
LABELS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("phrases", pa.list_(PHRASE_TYPE), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("boxes", pa.list_(BOX_TYPE), nullable=False),
    ]
)

META_VERSION = b"glipkit.version"
META_COMMAND = b"glipkit.command"
META_SETTINGS = b"glipkit.settings"

PHRASES_SUFFIX = ".phrases.parquet"
LABELS_SUFFIX = ".parquet"
STATS_FILE = "_stats.json"


def phrases_table(
    keys: Sequence[str], captions: Sequence[str], phrases: Sequence[Sequence[tuple[str, int, int]]]
) -> pa.Table:
    """A PHRASES_SCHEMA table from parallel lists; `phrases[i]` holds (text, start, end) tuples (e.g. Phrase)."""
    offsets = [0]
    texts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for row in phrases:
        for text, start, end in row:
            texts.append(text)
            starts.append(start)
            ends.append(end)
        offsets.append(len(texts))
    structs = pa.StructArray.from_arrays(
        [pa.array(texts, pa.string()), pa.array(starts, pa.int32()), pa.array(ends, pa.int32())],
        fields=list(PHRASE_TYPE),
    )
    column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs, type=pa.list_(PHRASE_TYPE))
    return pa.Table.from_arrays(
        [pa.array(keys, pa.string()), pa.array(captions, pa.string()), column], schema=PHRASES_SCHEMA
    )


def table_metadata(command: str, settings: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Key-value metadata recording the glipkit version, the producing command and its settings."""
    return {
        META_VERSION: __version__.encode(),
        META_COMMAND: command.encode(),
        META_SETTINGS: json.dumps(settings, sort_keys=True, default=str).encode(),
    }


def _temporary_path(path: Path) -> Path:
    # Hidden (leading dot) so that pyarrow datasets, pandas and DuckDB globs over the directory ignore it.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicParquetWriter:
    """Streams rows into a Parquet file that appears under its final name only when closed without error.

    Use as a context manager: `with AtomicParquetWriter(path, PHRASES_SCHEMA, "extract-phrases", settings) as w:
    w.write_rows([...])`. An exception inside the block removes the temporary file and leaves `path` untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        command: str,
        settings: Mapping[str, Any],
        *,
        row_group_size: int = 8192,
        compression: str = "zstd",
    ):
        self.path = Path(path)
        self.schema = schema.with_metadata(table_metadata(command, settings))
        self.row_group_size = row_group_size
        self.compression = compression
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "AtomicParquetWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temporary_path(self.path)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression)
        return self

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows given as dicts keyed by column name."""
        self.write_table(pa.Table.from_pylist(list(rows), schema=self.schema))

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table with this writer's columns; full row groups are flushed to the file."""
        if table.num_rows == 0:
            return
        self._pending.append(table.select(self.schema.names).cast(self.schema))
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        assert self._writer is not None
        table = pa.concat_tables(self._pending)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self.rows_written += table.num_rows
        self._pending, self._pending_rows = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None and self._writer is not None
        try:
            if exc_type is None:
                self._flush()
                self._writer.close()
                with open(self._tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(self._tmp, self.path)
                _fsync_directory(self.path.parent)
            else:
                with contextlib.suppress(Exception):
                    self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def write_table(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]] | pa.Table,
    schema: pa.Schema,
    command: str,
    settings: Mapping[str, Any],
) -> Path:
    """Write rows (dicts or an Arrow table) as one Parquet file, atomically; returns the path."""
    with AtomicParquetWriter(path, schema, command, settings) as writer:
        if isinstance(rows, pa.Table):
            writer.write_table(rows)
        else:
            writer.write_rows(rows)
    return Path(path)


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read one glipkit Parquet table (all columns or `columns`)."""
    return pq.read_table(path, columns=list(columns) if columns is not None else None)


def iter_rows(path: str | os.PathLike, columns: Sequence[str] | None = None, batch_size: int = 4096) -> Iterator[dict]:
    """Stream the rows of a Parquet table as dicts, a record batch at a time."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
        yield from batch.to_pylist()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The glipkit metadata of a table file: {"version", "command", "settings"} (settings decoded from JSON)."""
    meta = pq.read_schema(path).metadata or {}
    settings = meta.get(META_SETTINGS)
    return {
        "version": meta.get(META_VERSION, b"").decode() or None,
        "command": meta.get(META_COMMAND, b"").decode() or None,
        "settings": json.loads(settings) if settings else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# _stats.json


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: single-writer use only
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of `<out_dir>/_stats.json`, or an empty stats dict when there is none yet."""
    path = Path(out_dir) / STATS_FILE
    if not path.exists():
        return {"shards": {}}
    with open(path, encoding="utf-8") as f:
        stats = json.load(f)
    stats.setdefault("shards", {})
    return stats


def update_stats(
    out_dir: str | os.PathLike,
    shard_entries: Mapping[str, Mapping[str, Any]],
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge per-shard entries into `<out_dir>/_stats.json` under a file lock, written atomically.

    Entries replace those of the same shard name; `header` fields (e.g. command, settings) replace top-level
    fields. `totals` is recomputed from all shard entries by summing their numeric fields. Safe to call from
    several processes (ranks) at once on a POSIX filesystem.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / STATS_FILE
    with _locked(out / f".{STATS_FILE}.lock"):
        stats = read_stats(out)
        stats["glipkit_version"] = __version__
        if header:
            stats.update(header)
        stats["shards"].update({name: dict(entry) for name, entry in shard_entries.items()})
        stats["shards"] = dict(sorted(stats["shards"].items()))
        stats["totals"] = _totals(stats["shards"].values())
        tmp = _temporary_path(path)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(stats, f, indent=1, ensure_ascii=False, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return stats


def _totals(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"shards": 0}
    for entry in entries:
        totals["shards"] += 1
        for name, value in entry.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                totals[name] = totals.get(name, 0) + value
            elif isinstance(value, dict) and name.endswith("_by_reason"):
                bucket = totals.setdefault(name, {})
                for reason, n in value.items():
                    bucket[reason] = bucket.get(reason, 0) + n
        status = entry.get("status")
        if status:
            by_status = totals.setdefault("shards_by_status", {})
            by_status[status] = by_status.get(status, 0) + 1
    return totals
