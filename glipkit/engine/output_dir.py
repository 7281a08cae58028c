"""A job's output folder: a local directory or an fsspec URL (`s3://bucket/prefix`, `gs://...`), file by file.

A file appears under its final name only when complete: locally a hidden temporary sibling renamed into place
(glipkit/files.py); remotely a local temporary file, then one upload (S3 shows an object only when its upload
completes). Names are relative to the folder and use `/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

from glipkit.data.streams import filesystem, is_remote, local_path
from glipkit.files import atomic_path, read_json, write_json_atomic


class OutputDir:
    """Write, list and read the files of one output folder, local or remote (see the module docstring)."""

    def __init__(self, location: str | os.PathLike):
        text = os.fspath(location)
        self.fs = None
        if is_remote(text):
            self.fs, root = filesystem(text)
            self.root = root.rstrip("/")
            self.url = text.rstrip("/")
        else:
            self.root = os.path.abspath(local_path(text))
            self.url = self.root

    @property
    def is_local(self) -> bool:
        return self.fs is None

    def __str__(self) -> str:
        return self.url

    def path(self, name: str) -> str:
        """The full path or URL of `name`, for messages and the tables' `output` fields."""
        return f"{self.url}/{name}"

    def local_path(self, name: str) -> Path:
        assert self.fs is None, "a local output folder"
        return Path(self.root) / name

    def _remote(self, name: str) -> str:
        return f"{self.root}/{name}"

    def makedirs(self) -> None:
        if self.fs is None:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            with contextlib.suppress(FileExistsError):
                self.fs.makedirs(self.root, exist_ok=True)

    def names(self, folder: str = "") -> set[str]:
        """The file names directly inside `folder` (one listing; empty when it does not exist)."""
        if self.fs is None:
            directory = Path(self.root) / folder
            return {p.name for p in directory.iterdir() if p.is_file()} if directory.is_dir() else set()
        target = self._remote(folder) if folder else self.root
        try:
            self.fs.invalidate_cache(target)
            entries = self.fs.ls(target, detail=True)
        except FileNotFoundError:
            return set()
        return {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"}

    def exists(self, name: str) -> bool:
        if self.fs is None:
            return (Path(self.root) / name).is_file()
        self.fs.invalidate_cache(self._remote(name))
        return self.fs.isfile(self._remote(name))

    def modified(self, name: str) -> float:
        """When `name` was last written (seconds since the epoch)."""
        if self.fs is None:
            return os.path.getmtime(Path(self.root) / name)
        return self.fs.modified(self._remote(name)).timestamp()

    def open(self, name: str) -> IO[bytes]:
        """`name` opened for reading bytes."""
        return open(Path(self.root) / name, "rb") if self.fs is None else self.fs.open(self._remote(name), "rb")

    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """Yield a local path to write `name`'s content to; on success it becomes `name` whole, on an exception
        nothing appears."""
        if self.fs is None:
            with atomic_path(Path(self.root) / name) as tmp:
                yield tmp
            return
        folder = tempfile.mkdtemp(prefix="glipkit-out-")
        try:
            tmp = Path(folder) / Path(name).name
            yield tmp
            self.fs.put_file(str(tmp), self._remote(name))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def read_json(self, name: str, what: str = "JSON file") -> Any:
        if self.fs is None:
            return read_json(Path(self.root) / name, what)
        try:
            with self.open(name) as handle:
                return json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} not found: {self.path(name)}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{what} {self.path(name)} is not valid JSON: {e}") from None

    def write_json(self, name: str, value: Any) -> None:
        if self.fs is None:
            write_json_atomic(Path(self.root) / name, value)
            return
        self.fs.pipe_file(self._remote(name), _json_bytes(value))

    def create_exclusive(self, name: str, value: Any) -> bool:
        """Create `name` holding `value` as JSON only if it does not exist (atomic); False when it exists."""
        data = _json_bytes(value)
        if self.fs is None:
            path = Path(self.root) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        try:
            self.fs.pipe_file(self._remote(name), data, mode="create")  # S3: a conditional PUT (If-None-Match)
        except (FileExistsError, OSError) as e:
            if isinstance(e, FileExistsError) or "PreconditionFailed" in str(e) or "412" in str(e):
                return False
            raise
        return True

    def remove_if_token(self, name: str, token: Any) -> bool:
        """Remove the JSON file `name` only if its `token` is still `token` (a stale claim being taken over); False
        when it is gone or was replaced. Locally one atomic rename decides, so two runs taking over the same stale
        claim cannot both win; remotely read-compare-delete (object stores have no rename), a narrow window."""
        if self.fs is not None:
            try:
                if self.read_json(name, "claim").get("token") != token:
                    return False
            except (FileNotFoundError, ValueError):
                return False
            self.remove(name)
            return True
        path = Path(self.root) / name
        tomb = path.with_name(f".{path.name}.taken-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, tomb)  # only one run can move this file away
        except FileNotFoundError:
            return False
        try:
            if json.loads(tomb.read_text(encoding="utf-8") or "{}").get("token") == token:
                return True
            with contextlib.suppress(FileExistsError):  # a live claim replaced the stale one meanwhile: put it back
                os.link(tomb, path)
            return False
        finally:
            tomb.unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        if self.fs is None:
            (Path(self.root) / name).unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._remote(name))


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, ensure_ascii=False, default=str) + "\n").encode("utf-8")
