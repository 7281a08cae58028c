"""Parquet tables between commands (ARCHITECTURE.md "Data contracts"): schemas, atomic writer, reader.

Every table file is written under a hidden temporary name in its final directory, fsynced and renamed
(glipkit/files.py), so a file with the final name is always complete. Its key-value metadata holds `glipkit.version`,
`glipkit.command` and `glipkit.settings` (JSON).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glipkit import __version__
from glipkit.files import atomic_path

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
LABELS_SUFFIX = ".labels.parquet"  # never `<shard>.parquet`: img2dataset writes that name beside its tars
LEGACY_LABELS_SUFFIX = ".parquet"  # what glipkit before 0.2 named label tables


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


def top_boxes(scores, box_threshold: float, max_boxes: int = 0) -> np.ndarray:
    """Indices of the boxes scoring at least `box_threshold`, highest score first (ties in box order), at most
    `max_boxes` (0: all): the box filter of a labels table, when it is written and when it is read."""
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= box_threshold]
    return order[:max_boxes] if max_boxes > 0 else order


def table_metadata(command: str, settings: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Key-value metadata recording the glipkit version, the producing command and its settings."""
    return {
        META_VERSION: __version__.encode(),
        META_COMMAND: command.encode(),
        META_SETTINGS: json.dumps(settings, sort_keys=True, default=str).encode(),
    }


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
        atomic: Callable[[Path], ContextManager[Path]] | None = None,
    ):
        self.path = Path(path)
        self.atomic = atomic or atomic_path  # path -> context yielding the local file to write (e.g. an upload)
        self.schema = schema.with_metadata(table_metadata(command, settings))
        self.row_group_size = row_group_size
        self.compression = compression
        self.rows_written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._tmp: Path | None = None
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "AtomicParquetWriter":
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(self.atomic(self.path))
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
        assert self._stack is not None and self._writer is not None
        stack, self._stack = self._stack, None
        if exc_type is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            stack.__exit__(exc_type, exc, tb)  # removes the temporary file
            return
        with stack:  # renamed into place when this block finishes, removed when it raises
            self._flush()
            self._writer.close()


def write_table(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]] | pa.Table,
    schema: pa.Schema,
    command: str,
    settings: Mapping[str, Any],
    atomic: Callable[[Path], ContextManager[Path]] | None = None,
) -> Path:
    """Write rows (dicts or an Arrow table) as one Parquet file, atomically (`atomic`: see AtomicParquetWriter);
    returns the path."""
    with AtomicParquetWriter(path, schema, command, settings, atomic=atomic) as writer:
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


LABEL_COMMANDS = ("pseudo-label", "predict")  # commands whose tables hold boxes (LABELS_SCHEMA)


def label_table_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The label tables a spec names: a file, a glob, a list, or a directory's `*.labels.parquet` (else its
    `*.parquet` whose metadata says pseudo-label or predict wrote them). FileNotFoundError when none."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    tables: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            visible = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
            found = [p for p in visible if p.name.endswith(LABELS_SUFFIX)] or [
                p for p in visible if p.name.endswith(".parquet") and not p.name.endswith(PHRASES_SUFFIX)
                and _written_by(p, LABEL_COMMANDS)]
            if not found:
                raise FileNotFoundError(f"no label tables (*.labels.parquet) in {path}")
            tables.extend(found)
        elif path.is_file():
            tables.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"label tables not found: {item}")
            tables.extend(matches)
    return list(dict.fromkeys(tables))


def _written_by(path: Path, commands: Sequence[str]) -> bool:
    try:
        return read_metadata(path)["command"] in commands
    except (OSError, pa.ArrowException, ValueError):
        return False


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The glipkit metadata of a table file: {"version", "command", "settings"} (settings decoded from JSON)."""
    meta = pq.read_schema(path).metadata or {}
    settings = meta.get(META_SETTINGS)
    return {
        "version": meta.get(META_VERSION, b"").decode() or None,
        "command": meta.get(META_COMMAND, b"").decode() or None,
        "settings": json.loads(settings) if settings else None,
    }
