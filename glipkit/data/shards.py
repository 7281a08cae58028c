"""WebDataset tar shards: expand a shard spec, stream samples grouped by key, split shards over ranks/workers.

A shard is a local path, a `file:` URL, a `pipe:CMD`, or any fsspec URL (`http(s)://`, `s3://`, `gs://`,
`hf://`, `az://`); it is read front to back as a stream (data/streams.py), never seeked. Samples follow
webdataset's rules: consecutive members sharing a key form one sample (`000000012.jpg`, `000000012.txt`,
`000000012.json`); the key is the member path up to the first dot of its file name and the extension is the rest,
lowercased (`webdataset.tariterators.base_plus_ext`). A key met again in the same shard is a `duplicate key`:
reported, the first sample kept.
"""

from __future__ import annotations

import bz2
import collections
import glob
import gzip
import io
import json
import logging
import lzma
import os
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Sequence, TypeVar, Union

from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from glipkit.data.streams import StreamError, filesystem, is_pipe, is_remote, join_url, local_path, open_stream, \
    url_name
from glipkit.errors import GlipkitUsageError
from glipkit.files import atomic_path

T = TypeVar("T")
ShardSource = Union[Path, str]  # a local path, or a URL / `pipe:CMD` as given

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".shards")
# Members skipped when `with_images=False`: decoding or even reading them is the expensive part.
MEDIA_EXTENSIONS = frozenset(
    "jpg jpeg png webp bmp gif tif tiff ppm pgm pbm jxl avif heic mp4 webm avi mov mkv wav mp3 flac".split()
)
_BLOCK = tarfile.BLOCKSIZE
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skipped metadata members (`__index__`, ...)
_log = logging.getLogger(__name__)

# Stable reasons for a sample without a usable caption; _stats.json groups skips by these strings.
NO_CAPTION = "no caption"
CAPTION_NOT_UTF8 = "caption not UTF-8"
EMPTY_CAPTION = "empty caption"
INVALID_JSON = "invalid JSON"
DUPLICATE_KEY = "duplicate key"


class ShardSpecError(GlipkitUsageError):
    """A shard spec that names no readable shard (bad directory, empty glob, missing list file, not a shard)."""


class ShardReadError(Exception):
    """A shard that could not be read to its end. Samples before the damage were already yielded.

    `key` is the sample that was being read when the damage was met (it was not yielded), if any.
    """

    def __init__(self, shard: str | os.PathLike, reason: str, key: str | None = None, samples_read: int = 0):
        self.shard = str(shard)
        self.reason = reason
        self.key = key
        self.samples_read = samples_read
        where = f" (after {samples_read} samples, in sample {key!r})" if key is not None else ""
        super().__init__(f"{self.shard}: {reason}{where}")


class CaptionError(ValueError):
    """A sample whose caption is missing, empty or undecodable; `reason` is one of the module constants."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Sample:
    """One sample of a shard: its key and the raw bytes of the members that were read, by extension.

    `error` is set (to DUPLICATE_KEY) for a sample that must not be used; its members are not read.
    """

    key: str
    shard: str
    files: dict[str, bytes] = field(default_factory=dict)
    # Extensions of all members of the sample, including those not read (e.g. images when with_images=False).
    extensions: tuple[str, ...] = ()
    error: str | None = None

    @property
    def caption(self) -> str:
        """The caption (raises CaptionError when missing, empty or not UTF-8)."""
        return sample_caption(self)

    @property
    def json(self) -> dict | None:
        """The parsed `.json` member, or None when absent or invalid."""
        raw = self.files.get("json")
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None

    @property
    def meta(self) -> dict[str, str | int | None]:
        """img2dataset's fields of the `.json` member: `url`, and `original_width` / `original_height` (the web
        original's size, written when img2dataset resized); None where absent."""
        meta = self.json or {}
        url = meta.get("url")
        sizes = {k: meta.get(k) for k in ("original_width", "original_height")}
        return {"url": url if isinstance(url, str) else None,
                **{k: v if isinstance(v, int) and not isinstance(v, bool) else None for k, v in sizes.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Shard specs


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion (braceexpand): ranges `{00000..00099}` (zero padding kept) and lists `{a,b}`."""
    return list(braceexpand(pattern))


def split_top_level(s: str, sep: str) -> list[str]:
    """Split `s` on `sep` outside braces: "a{1,2},b" -> ["a{1,2}", "b"]."""
    parts, depth, current = [], 0, []
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def source_name(source: str | os.PathLike) -> str:
    """The file name of a path or URL (for a `pipe:CMD`, of the last shard-like word of the command)."""
    if is_pipe(source):
        words = re.findall(r"[^\s/'\"]+", str(source)[5:])
        named = [w for w in words if w.lower().endswith(SHARD_SUFFIXES)]
        return named[-1] if named else (words[-1] if words else "pipe")
    return url_name(str(source)) if is_remote(source) else Path(source).name


def is_shard_path(path: str | os.PathLike) -> bool:
    """Whether the file name has a tar shard suffix (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)."""
    return source_name(path).lower().endswith(SHARD_SUFFIXES)


def shard_stem(path: str | os.PathLike) -> str:
    """The shard's name without directory and shard/caption-file suffix: `data/00012.tar` -> `00012` (also for
    URLs and `pipe:` commands)."""
    name = source_name(path)
    lower = name.lower()
    for suffix in SHARD_SUFFIXES + (".jsonl", ".parquet", ".txt", ".json"):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def shard_url(shard: str | os.PathLike) -> str:
    """Where a shard really is: the absolute path of a local shard, the URL or `pipe:` command as given."""
    path = local_path(shard)
    return str(path.absolute()) if path is not None else str(shard)


def expected_samples(shard: str | os.PathLike) -> int | None:
    """How many samples a local shard holds, from img2dataset's `<stem>_stats.json` beside it (`successes`);
    None when there is no such file (or the shard is remote): an estimate for progress, never a check."""
    path = local_path(shard)
    stats = path.with_name(f"{shard_stem(path)}_stats.json") if path is not None else None
    if stats is None or not stats.is_file():
        return None
    try:
        value = json.loads(stats.read_text(encoding="utf-8")).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value >= 0 else None


def locate_shard(table: str | os.PathLike, value: str | None,
                 by_stem: Mapping[str, str | os.PathLike] | None = None) -> str:
    """Where the shard a label table row names is: matched by stem among `by_stem` (the user's `--shards`) when
    given; else the value itself when it is a URL or `pipe:` or an existing file, else the value relative to the
    table's directory. FileNotFoundError naming the table and the shard otherwise."""
    table = Path(table)
    stem = shard_stem(value) if value else table.name.split(".")[0]
    if by_stem is not None:
        if stem not in by_stem:
            raise FileNotFoundError(f"{table}: its shard '{value or stem}' is not among the given shards")
        return str(by_stem[stem])
    if value and local_path(value) is None:  # a URL or a pipe: read as it is
        return value
    for candidate in ([Path(value), table.parent / value] if value else []):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"{table}: cannot find its shard '{value or stem}'; pass the shards' location "
                            "(--shards, or --pseudo-shards for train-student)")


@dataclass(frozen=True)
class PathKind:
    """What a path spec names: `name` files (`what` in plural) with these suffixes; `lists`: a file with a
    LIST_SUFFIXES name lists more specs; `missing_ok`: a named file may be missing (its reader reports it)."""

    name: str
    what: str
    suffixes: tuple[str, ...]
    lists: bool = False
    missing_ok: bool = False


TAR_SHARDS = PathKind("shard", "shards", SHARD_SUFFIXES, lists=True, missing_ok=True)


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike], kind: PathKind) -> list[ShardSource]:
    """Expand a path spec into an ordered list of inputs without duplicates: local paths as Path, URLs and
    `pipe:` commands as str.

    A spec is a path or URL, a brace pattern (`data/{00000..00099}.tar`), a glob (`data/*.tar`, also on fsspec
    URLs), a directory or remote prefix (its files of the kind, sorted, hidden and `_` names skipped), a list file
    when the kind allows (one spec per line, `#` comments, relative lines relative to the list; it may list URLs),
    or a comma-separated list of these. Files of other kinds met in a glob or listing (img2dataset's `.parquet`
    and `_stats.json` beside its shards) are left out, said once. Raises ShardSpecError (a usage error) for a spec
    that names nothing, an empty glob or directory, a named file that is not of the kind, and a missing local file
    (unless the kind allows missing files: then only when all are missing). Remote files are not checked here.
    """
    left_out: list[str] = []
    found = _expand(spec, kind, 0, left_out)
    if left_out:
        shown = ", ".join(sorted({source_name(p) for p in left_out})[:5])
        _log.warning("left out %d file(s) that are not %s: %s%s", len(left_out), kind.what, shown,
                     ", ..." if len(set(map(source_name, left_out))) > 5 else "")
    return found


def _expand(spec, kind: PathKind, depth: int, left_out: list[str]) -> list[ShardSource]:
    if depth > 8:
        raise ShardSpecError(f"{kind.name} list files nest more than 8 deep")
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        items = [text] if os.path.exists(text) or is_pipe(text) else split_top_level(text, ",")
    else:
        items = [os.fspath(s) for s in spec]
    out: list[ShardSource] = []
    for item in (i.strip() for i in items):
        for candidate in ([item] if os.path.exists(item) else expand_braces(item)) if item else []:
            out.extend(_expand_one(candidate, kind, depth, left_out))
    seen: set[ShardSource] = set()
    unique = [p for p in out if not (p in seen or seen.add(p))]
    label = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else ",".join(items)
    if not unique:
        raise ShardSpecError(f"{kind.name} spec {label!r} names no {kind.what}")
    if depth == 0 and not any(not isinstance(p, Path) or p.exists() for p in unique):
        raise ShardSpecError(f"none of the {len(unique)} {kind.what} of spec {label!r} exists (first: {unique[0]})")
    return unique


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[ShardSource]:
    """The tar shards of a shard spec (`--shards`, see expand_paths); a missing shard is reported when read."""
    return expand_paths(spec, TAR_SHARDS)


def _of_kind(name: str, kind: PathKind) -> bool:
    return name.lower().endswith(kind.suffixes) and not name.startswith((".", "_"))


def _kept(found: list[tuple[str, ShardSource]], kind: PathKind, left_out: list[str]) -> list[ShardSource]:
    """The (name, source) pairs of a listing or glob that are of the kind; the others go to `left_out`."""
    left_out.extend(str(s) for n, s in found if not _of_kind(n, kind) and not n.startswith((".", "_")))
    return [s for n, s in found if _of_kind(n, kind)]


def _expand_one(item: str, kind: PathKind, depth: int, left_out: list[str]) -> list[ShardSource]:
    if is_pipe(item):
        return [item]
    path = local_path(item)
    if path is None:
        return _expand_remote(item, kind, depth, left_out)
    if path.is_dir():
        found = _kept(sorted((p.name, p) for p in path.iterdir() if p.is_file()), kind, left_out)
        if not found:
            raise ShardSpecError(f"directory {path} holds no {kind.what} ({', '.join(kind.suffixes)})")
        return found
    if kind.lists and path.name.lower().endswith(LIST_SUFFIXES):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ShardSpecError(f"cannot read {kind.name} list {path}: {e}") from None
        return _listed(lines, lambda line: line if local_path(line) is None or os.path.isabs(
            os.path.expanduser(line)) else str(path.parent / line), kind, depth, left_out)
    if glob.has_magic(str(path)) and not path.exists():
        matches = sorted((Path(p).name, Path(p)) for p in glob.glob(str(path)) if os.path.isfile(p))
        return _globbed(item, matches, kind, left_out)
    if path.exists() and not path.is_file():
        return [path]  # a FIFO or device, e.g. `<(cat x.tar)`: read as a stream
    _check_named(str(path), kind)
    if not kind.missing_ok and not path.is_file():
        raise ShardSpecError(f"{kind.name} {path} does not exist")
    return [path]


def _globbed(pattern: str, matches: list[tuple[str, ShardSource]], kind: PathKind,
             left_out: list[str]) -> list[ShardSource]:
    """The files of the kind among a glob's (name, source) matches; a usage error when there are none."""
    if not matches:
        raise ShardSpecError(f"glob {pattern!r} matches no files")
    found = _kept(matches, kind, left_out)
    if not found:
        raise ShardSpecError(f"glob {pattern!r} matches no {kind.what} ({', '.join(kind.suffixes)})")
    return found


def _listed(lines: list[str], resolve, kind: PathKind, depth: int, left_out: list[str]) -> list[ShardSource]:
    out: list[ShardSource] = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.extend(_expand(resolve(line), kind, depth + 1, left_out))
    return out


def _check_named(name: str, kind: PathKind) -> None:
    """A file named on its own must be of the kind (a usage error otherwise)."""
    base = source_name(name)
    if base.lower().endswith(kind.suffixes):
        return
    hint = ""
    if base.lower().endswith((".parquet", ".json")):
        hint = " (img2dataset writes .parquet and _stats.json metadata beside its .tar shards: name the shards)"
    raise ShardSpecError(f"{name} is not a {kind.name} ({', '.join(kind.suffixes)}){hint}")


def _expand_remote(url: str, kind: PathKind, depth: int, left_out: list[str]) -> list[ShardSource]:
    fs, path = filesystem(url)
    name = source_name(url)
    try:
        if glob.has_magic(path):
            matches = fs.glob(path, detail=True)
            files = sorted((source_name(p), fs.unstrip_protocol(p)) for p, info in matches.items()
                           if info.get("type") != "directory")
            return _globbed(url, files, kind, left_out)
        if kind.lists and name.lower().endswith(LIST_SUFFIXES):
            lines = fs.cat_file(path).decode("utf-8").splitlines()
            return _listed(lines, lambda line: join_url(url, line), kind, depth, left_out)
        if url.endswith("/") or (not name.lower().endswith(kind.suffixes) and fs.isdir(path)):
            entries = fs.ls(path, detail=True)
            files = sorted((source_name(e["name"]), fs.unstrip_protocol(e["name"])) for e in entries
                           if e.get("type") != "directory")
            found = _kept(files, kind, left_out)
            if not found:
                raise ShardSpecError(f"{url} holds no {kind.what} ({', '.join(kind.suffixes)})")
            return found
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ShardSpecError(f"cannot list {url}: {type(e).__name__}: {e}") from None
    _check_named(url, kind)
    return [url]


# ----------------------------------------------------------------------------------------------------------------
# Reading


class _Replay(io.RawIOBase):
    """`head`, then the rest of `inner`: the first bytes can be looked at without seeking."""

    def __init__(self, head: bytes, inner: IO[bytes]):
        self._head, self._inner = head, inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Tail:
    """Reads `inner`, keeping the last two chunks read and their offsets, so that the block where tarfile stopped
    can be looked at afterwards (tarfile ends silently at a short or invalid header)."""

    def __init__(self, inner: IO[bytes]):
        self._inner = inner
        self._chunks: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=2)
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._chunks.append((self.offset, data))
            self.offset += len(data)
        return data

    def block_at(self, pos: int) -> bytes:
        """The (up to 512) bytes read at `pos`."""
        start = self._chunks[0][0] if self._chunks else self.offset
        kept = b"".join(chunk for _, chunk in self._chunks)
        return kept[max(0, pos - start) : pos - start + _BLOCK] if pos >= start else b""


def _decompressed(stream: IO[bytes]) -> IO[bytes]:
    """The tar bytes of a stream, decompressing gzip / bzip2 / xz by their magic bytes."""
    head = b""
    while len(head) < 6 and (more := stream.read(6 - len(head))):
        head += more
    raw = _Replay(head, stream)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if head == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    return raw


_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def iter_samples(
    path: str | os.PathLike,
    with_images: bool = True,
    *,
    extensions: Iterable[str] | None = None,
) -> Iterator[Sample]:
    """Stream the samples of one tar shard (a path, `file:`, `pipe:CMD` or fsspec URL), members grouped by key,
    in file order.

    `with_images=False` does not keep media members (images, video, audio); `extensions` (e.g. {"txt", "json"})
    restricts the members kept to those extensions. A repeated key yields a Sample with `error=DUPLICATE_KEY` and
    no files. A missing, unreadable, truncated or corrupt shard, or a connection that kept failing, raises
    ShardReadError after all intact samples before the damage were yielded.
    """
    name = str(path)
    wanted = None if extensions is None else {e.lower().lstrip(".") for e in extensions}

    def want(ext: str) -> bool:
        if wanted is not None:
            return ext in wanted
        return with_images or ext.rsplit(".", 1)[-1] not in MEDIA_EXTENSIONS

    try:
        stream = open_stream(path)
    except FileNotFoundError:
        raise ShardReadError(name, "cannot open: no such file") from None
    except Exception as e:  # noqa: BLE001 - fsspec backends and gopen raise their own types
        raise ShardReadError(name, f"cannot open: {getattr(e, 'strerror', None) or e}") from None
    count, key, damage = 0, None, None
    try:
        try:
            tail = _Tail(_decompressed(stream))
            tar = tarfile.open(fileobj=tail, mode="r|")  # type: ignore[call-overload]
        except StreamError as e:
            raise ShardReadError(name, str(e)) from None
        except _READ_ERRORS as e:
            raise ShardReadError(name, _command_failure(stream) or f"not a readable tar file: {e}") from None
        seen_keys: set[str] = set()
        files: dict[str, bytes] = {}
        exts: list[str] = []
        duplicate = False
        try:
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header otherwise; shards can be large
                member_key, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
                if member_key is None or (("/" not in member.name) and _META_MEMBER.match(member.name)):
                    continue
                ext = ext.lower()
                if member_key != key or ext in exts:  # a repeated extension starts a new sample with the same key
                    if key is not None:
                        count += 1
                        yield Sample(key, name, files, tuple(exts), DUPLICATE_KEY if duplicate else None)
                    duplicate = member_key in seen_keys
                    seen_keys.add(member_key)
                    key, files, exts = member_key, {}, []
                exts.append(ext)
                if not duplicate and want(ext):
                    handle = tar.extractfile(member)
                    files[ext] = handle.read() if handle is not None else b""
            damage = _end_of_archive_problem(tar, tail)
        except StreamError as e:
            damage = str(e)
        except _READ_ERRORS as e:
            damage = f"truncated or corrupt tar: {e}"
        if damage:
            raise ShardReadError(name, _command_failure(stream) or damage, key=key, samples_read=count)
        if key is not None:
            yield Sample(key, name, files, tuple(exts), DUPLICATE_KEY if duplicate else None)
        failure = _command_failure(stream)  # a pipe's command that failed after writing a whole tar
        if failure:
            raise ShardReadError(name, failure, samples_read=count + (key is not None))
    finally:
        _quietly_close(stream)


def _command_failure(stream) -> str | None:
    """For a `pipe:` whose command failed (exit status other than 0, or 141 when we stopped reading): why."""
    if not hasattr(stream, "proc"):
        return None
    _quietly_close(stream)
    status = stream.proc.wait()
    return f"command exited with status {status}" if status not in (0, 141) else None


def _quietly_close(stream) -> None:
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - already reporting the first error, or the consumer stopped early
        pass


def _end_of_archive_problem(tar: tarfile.TarFile, tail: _Tail) -> str | None:
    # tarfile ends iteration silently on a short, empty or invalid header after the first member; only a
    # zero block (the end-of-archive marker) at the stop position means the archive really ended there.
    block = tail.block_at(tar.offset)
    if len(block) < _BLOCK:
        return "truncated tar: file ends before the end-of-archive marker"
    if block.count(0) != _BLOCK:
        return f"corrupt tar: unreadable member header at byte {tar.offset}"
    return None


def _decoded_caption(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaptionError(CAPTION_NOT_UTF8, f"byte {e.start} of {where}") from None


def sample_caption(sample: Sample) -> str:
    """The caption of a sample: its `.txt` member, else (also when the `.txt` is empty) the `caption` field of its
    `.json` member.

    Raises CaptionError with reason NO_CAPTION, CAPTION_NOT_UTF8, INVALID_JSON, EMPTY_CAPTION or the sample's
    own error (DUPLICATE_KEY).
    """
    if sample.error:
        raise CaptionError(sample.error, sample.key)
    raw = sample.files.get("txt")
    if raw is not None:
        caption = _decoded_caption(raw, f"{sample.key}.txt")
        if caption.strip() or "json" not in sample.files:
            if not caption.strip():
                raise CaptionError(EMPTY_CAPTION)
            return caption
        try:
            return _json_caption(sample)
        except CaptionError:
            raise CaptionError(EMPTY_CAPTION, f"{sample.key}.txt is empty and its .json has no caption") from None
    if "json" in sample.files:
        return _json_caption(sample)
    raise CaptionError(NO_CAPTION, f"{sample.key} has no .txt or .json member")


def _json_caption(sample: Sample) -> str:
    try:
        meta = json.loads(_decoded_caption(sample.files["json"], f"{sample.key}.json"))
    except ValueError as e:
        raise CaptionError(INVALID_JSON, f"{sample.key}.json: {e}") from None
    caption = meta.get("caption") if isinstance(meta, dict) else None
    if not isinstance(caption, str):
        raise CaptionError(NO_CAPTION, f"{sample.key} has no .txt and its .json has no 'caption' string")
    if not caption.strip():
        raise CaptionError(EMPTY_CAPTION)
    return caption


# ----------------------------------------------------------------------------------------------------------------
# Writing


def write_shard(path: str | os.PathLike, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> Path:
    """Write a tar shard of (key, {extension: bytes}) samples, atomically."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o644
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# Splitting over ranks and workers


def rank_and_world_size(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK / WORLD_SIZE environment variables; (0, 1) when unset."""
    env = os.environ if env is None else env
    try:
        rank = int(env.get("RANK", "0"))
        world_size = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GlipkitUsageError(
            f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise GlipkitUsageError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    return rank, world_size


def shards_for_rank(shards: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's slice of the shards: every world_size-th shard starting at rank (from env when None).

    Slices of all ranks are disjoint and together hold every shard once; with fewer shards than ranks some
    ranks get none.
    """
    if rank is None or world_size is None:
        env_rank, env_world = rank_and_world_size()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return list(shards[rank::world_size])


def shards_for_worker(shards: Sequence[T], worker_id: int | None = None, num_workers: int | None = None) -> list[T]:
    """This DataLoader worker's slice of (a rank's) shards; worker id and count from torch when None.

    Apply after shards_for_rank: rank r, worker w of W get the shards at r + world_size * (w + W * k).
    """
    if worker_id is None or num_workers is None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker_id = (info.id if info else 0) if worker_id is None else worker_id
        num_workers = (info.num_workers if info else 1) if num_workers is None else num_workers
    return shards_for_rank(shards, worker_id, num_workers)
