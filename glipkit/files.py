"""Writing files so that a reader sees the old file or the new one, whole, and reading JSON with a clear error.

A leaf module (standard library only) so that every package, `model/` included, can use it: weights, tables,
stats, checkpoints and metrics are all written through `atomic_path`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

TEMPORARY_MARK = ".tmp-"  # hidden temporary names are `.<name>.tmp-<pid>-<random>`


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden, unique sibling of `path` (leading dot: dataset globs skip it; pid + random: no two writers share it)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temporary_of(candidate: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when `candidate` is a temporary name that `temporary_path(path)` could have made."""
    return Path(candidate).name.startswith(f".{Path(path).name}{TEMPORARY_MARK}")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (ignored where a directory cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to (a file or a directory); on success it is synced and
    renamed to `path`, on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync_tree(tmp)
        if mode is not None and tmp.is_file():
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def default_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0o644 under the usual 022); writers that go
    through `tempfile` (safetensors) create 0o600 files, which `atomic_path(path, mode=...)` corrects."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:  # reading it leaves the umask alone
            return 0o666 & ~int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, value: Any, indent: int | None = 1,
                      default: Callable[[Any], Any] = str) -> Path:
    """Write `value` as JSON to `path` atomically; `default` turns other values into JSON (paths: strings)."""
    return write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False, default=default) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or malformed file raises ValueError naming the file, `what` it is and where."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory, not a file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error.msg} at line {error.lineno} column "
                         f"{error.colno}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not UTF-8 text: {error.reason} at byte {error.start}") from None


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
