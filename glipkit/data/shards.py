"""WebDataset tar shards: expand a path spec, stream samples grouped by key, split shards over ranks/workers.

Layout (img2dataset / WebDataset): consecutive tar members sharing a key form one sample, e.g.
`000000012.jpg`, `000000012.txt`, `000000012.json`. The key is the member path up to the first dot
of its file name; the extension is everything after that dot, lowercased.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Sequence, TypeVar

from glipkit.errors import GlipkitUsageError
from glipkit.files import atomic_path

T = TypeVar("T")

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".shards")
# Members skipped when `with_images=False`: decoding or even reading them is the expensive part.
MEDIA_EXTENSIONS = frozenset(
    "jpg jpeg png webp bmp gif tif tiff ppm pgm pbm jxl avif heic mp4 webm avi mov mkv wav mp3 flac".split()
)
_BLOCK = tarfile.BLOCKSIZE

# Stable reasons for a sample without a usable caption; _stats.json groups skips by these strings.
NO_CAPTION = "no caption"
CAPTION_NOT_UTF8 = "caption not UTF-8"
EMPTY_CAPTION = "empty caption"
INVALID_JSON = "invalid JSON"


class ShardSpecError(GlipkitUsageError):
    """A shard spec that names no readable shard (bad directory, empty glob, missing list file)."""


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
    """One sample of a shard: its key and the raw bytes of the members that were read, by extension."""

    key: str
    shard: str
    files: dict[str, bytes] = field(default_factory=dict)
    # Extensions of all members of the sample, including those not read (e.g. images when with_images=False).
    extensions: tuple[str, ...] = ()

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


# ----------------------------------------------------------------------------------------------------------------
# Shard specs


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: numeric ranges `{00000..00099}` (zero padding kept) and lists `{a,b}`."""
    start = _find_brace_group(pattern)
    if start is None:
        return [pattern]
    open_at, close_at = start
    head, body, tail = pattern[:open_at], pattern[open_at + 1 : close_at], pattern[close_at + 1 :]
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if m:
        a, b = m.group(1), m.group(2)
        lo, hi = int(a), int(b)
        padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) if width else str(i) for i in range(lo, hi + step, step)]
    else:
        options = split_top_level(body, ",")
    out: list[str] = []
    for option in options:
        for rest in expand_braces(head + option + tail):
            out.append(rest)
    return out


def _find_brace_group(s: str) -> tuple[int, int] | None:
    """First `{...}` holding a range or a top-level comma; literal braces (e.g. `{}`) are left alone."""
    i = 0
    while i < len(s):
        if s[i] == "{":
            depth = 0
            for j in range(i, len(s)):
                if s[j] == "{":
                    depth += 1
                elif s[j] == "}":
                    depth -= 1
                    if depth == 0:
                        body = s[i + 1 : j]
                        if re.fullmatch(r"-?\d+\.\.-?\d+", body) or len(split_top_level(body, ",")) > 1:
                            return i, j
                        break
        i += 1
    return None


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


def is_shard_path(path: str | os.PathLike) -> bool:
    """Whether the file name has a tar shard suffix (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)."""
    return str(path).lower().endswith(SHARD_SUFFIXES)


def shard_stem(path: str | os.PathLike) -> str:
    """The shard's name without directory and shard/caption-file suffix: `data/00012.tar` -> `00012`."""
    name = Path(path).name
    lower = name.lower()
    for suffix in SHARD_SUFFIXES + (".jsonl", ".parquet", ".txt", ".json"):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


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


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike], kind: PathKind, *,
                 _depth: int = 0) -> list[Path]:
    """Expand a path spec into an ordered list of paths without duplicates.

    A spec is a path, a brace pattern (`data/{00000..00099}.tar`), a glob (`data/*.tar`), a directory (its
    files of the kind, sorted, hidden and `_` names skipped), a list file when the kind allows (one spec per
    line, `#` comments, relative lines relative to the list), or a comma-separated list of these. Raises
    ShardSpecError (a usage error) for a spec that names nothing, an empty glob or directory, and a missing file
    (unless the kind allows missing files: then only when all are missing).
    """
    if _depth > 8:
        raise ShardSpecError(f"{kind.name} list files nest more than 8 deep")
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        items = [text] if os.path.exists(text) else split_top_level(text, ",")
    else:
        items = [os.fspath(s) for s in spec]
    out: list[Path] = []
    for item in (i.strip() for i in items):
        for candidate in ([item] if os.path.exists(item) else expand_braces(item)) if item else []:
            out.extend(_expand_one(os.path.expanduser(candidate), kind, _depth))
    seen: set[Path] = set()
    unique = [p for p in out if not (p in seen or seen.add(p))]
    label = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else ",".join(items)
    if not unique:
        raise ShardSpecError(f"{kind.name} spec {label!r} names no {kind.what}")
    if _depth == 0 and not any(p.exists() for p in unique):
        raise ShardSpecError(f"none of the {len(unique)} {kind.what} of spec {label!r} exists (first: {unique[0]})")
    return unique


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The tar shards of a shard spec (`--shards`, see expand_paths); a missing shard is reported when read."""
    return expand_paths(spec, TAR_SHARDS)


def _expand_one(item: str, kind: PathKind, depth: int) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(kind.suffixes)
                       and not p.name.startswith((".", "_")))
        if not found:
            raise ShardSpecError(f"directory {path} holds no {kind.what} ({', '.join(kind.suffixes)})")
        return found
    if kind.lists and path.is_file() and item.lower().endswith(LIST_SUFFIXES):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ShardSpecError(f"cannot read {kind.name} list {path}: {e}") from None
        out: list[Path] = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not os.path.isabs(os.path.expanduser(line)):
                line = str(path.parent / line)
            out.extend(expand_paths(line, kind, _depth=depth + 1))
        return out
    if glob.has_magic(item) and not path.exists():
        matches = sorted(Path(p) for p in glob.glob(item) if os.path.isfile(p))
        if not matches:
            raise ShardSpecError(f"glob {item!r} matches no files")
        return matches
    if not kind.missing_ok and not path.is_file():
        raise ShardSpecError(f"{kind.name} {path} does not exist")
    return [path]


# ----------------------------------------------------------------------------------------------------------------
# Reading


class _LastBlockReader(io.RawIOBase):
    """Delegating reader that remembers the last block read, so a silent early stop of tarfile is visible."""

    def __init__(self, inner: IO[bytes]):
        self._inner = inner
        self.last_pos = -1
        self.last_block = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        pos = self._inner.tell()
        data = self._inner.read(size)
        if size == _BLOCK:
            self.last_pos, self.last_block = pos, data
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


def _open_stream(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(stream of tar bytes, underlying file): decompresses gzip/bzip2/xz shards by their magic bytes."""
    raw = open(path, "rb")
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw), raw  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw), raw  # type: ignore[return-value]
    return raw, raw


def _split_name(name: str) -> tuple[str, str] | None:
    directory, _, base = name.rpartition("/")
    dot = base.find(".")
    if dot <= 0 or dot == len(base) - 1:
        return None  # no extension, or a hidden file such as `._x` (macOS resource forks)
    key = (directory + "/" if directory else "") + base[:dot]
    return key, base[dot + 1 :].lower()


def iter_samples(
    path: str | os.PathLike,
    with_images: bool = True,
    *,
    extensions: Iterable[str] | None = None,
) -> Iterator[Sample]:
    """Stream the samples of one tar shard, members grouped by key, in file order.

    `with_images=False` does not read media members (images, video, audio): tarfile seeks past their data.
    `extensions` (e.g. {"txt", "json"}) restricts the members read to those extensions. A missing, unreadable,
    truncated or corrupt shard raises ShardReadError after all intact samples before the damage were yielded.
    """
    path = Path(path)
    wanted = None if extensions is None else {e.lower().lstrip(".") for e in extensions}

    def want(ext: str) -> bool:
        if wanted is not None:
            return ext in wanted
        return with_images or ext.rsplit(".", 1)[-1] not in MEDIA_EXTENSIONS

    try:
        stream, raw = _open_stream(path)
    except OSError as e:
        raise ShardReadError(path, f"cannot open: {e.strerror or e}") from None
    reader = _LastBlockReader(stream)
    count = 0
    key: str | None = None
    try:
        try:
            tar = tarfile.open(fileobj=reader, mode="r:")  # type: ignore[arg-type]
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ShardReadError(path, f"not a readable tar file: {e}") from None
        files: dict[str, bytes] = {}
        seen: list[str] = []
        try:
            while True:
                member = tar.next()
                if member is None:
                    break
                if not member.isfile():
                    continue
                split = _split_name(member.name)
                if split is None:
                    continue
                member_key, ext = split
                if member_key != key:
                    if key is not None:
                        count += 1
                        yield Sample(key, str(path), files, tuple(seen))
                        tar.members.clear()  # tarfile keeps every header otherwise; shards can be large
                    key, files, seen = member_key, {}, []
                seen.append(ext)
                if want(ext):
                    handle = tar.extractfile(member)
                    files[ext] = handle.read() if handle is not None else b""
            damage = _end_of_archive_problem(tar, reader)
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            damage = f"truncated or corrupt tar: {e}"
        if damage:
            raise ShardReadError(path, damage, key=key, samples_read=count)
        if key is not None:
            yield Sample(key, str(path), files, tuple(seen))
    finally:
        stream.close()
        raw.close()  # a decompressor does not close the file it was given


def _end_of_archive_problem(tar: tarfile.TarFile, reader: _LastBlockReader) -> str | None:
    # tarfile ends iteration silently on a short, empty or invalid header after the first member; only a
    # zero block (the end-of-archive marker) at the stop position means the archive really ended there.
    if reader.last_pos != tar.offset:
        reader.seek(tar.offset)
        reader.read(_BLOCK)
    block = reader.last_block
    if len(block) < _BLOCK:
        return "truncated tar: file ends before the end-of-archive marker"
    if block.count(0) != _BLOCK:
        return f"corrupt tar: unreadable member header at byte {tar.offset}"
    return None


def sample_caption(sample: Sample) -> str:
    """The caption of a sample: its `.txt` member, else the `caption` field of its `.json` member.

    Raises CaptionError with reason NO_CAPTION, CAPTION_NOT_UTF8, INVALID_JSON or EMPTY_CAPTION.
    """
    raw = sample.files.get("txt")
    if raw is not None:
        try:
            caption = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CaptionError(CAPTION_NOT_UTF8, f"byte {e.start} of {sample.key}.txt") from None
    elif "json" in sample.files:
        try:
            meta = json.loads(sample.files["json"].decode("utf-8"))
        except UnicodeDecodeError:
            raise CaptionError(CAPTION_NOT_UTF8, f"{sample.key}.json") from None
        except ValueError as e:
            raise CaptionError(INVALID_JSON, f"{sample.key}.json: {e}") from None
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if not isinstance(caption, str):
            raise CaptionError(NO_CAPTION, f"{sample.key} has no .txt and its .json has no 'caption' string")
    else:
        raise CaptionError(NO_CAPTION, f"{sample.key} has no .txt or .json member")
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
