"""Opening inputs wherever they live, as sequential byte streams: local paths, `file:`, `pipe:CMD` (webdataset's
gopen) and any fsspec URL (`http(s)://`, `s3://`, `gs://`, `hf://`, `az://`, ...).

Reading never seeks, so FIFOs (`<(cat x.tar)`) and pipes work and memory stays flat. A remote stream whose
connection drops is reopened at the byte where it stopped, a few times, before the read fails with the URL and
the reason.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import time
from pathlib import Path
from typing import IO, Callable
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

RETRIES = 3  # reopenings of a remote stream after a failed read, with a doubling pause
RETRY_PAUSE_S = 0.25
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class StreamError(OSError):
    """A remote stream that kept failing: the URL, how far it got and the last reason."""


def is_pipe(source: str | os.PathLike) -> bool:
    """Whether `source` is a webdataset `pipe:CMD` (the command's stdout is the stream)."""
    return isinstance(source, str) and source.startswith("pipe:")


def is_remote(source: str | os.PathLike) -> bool:
    """Whether `source` is a URL other than `file:` (read through fsspec)."""
    m = _SCHEME.match(str(source)) if isinstance(source, str) else None
    return m is not None and m.group(1).lower() != "file"


def local_path(source: str | os.PathLike) -> Path | None:
    """The local path of a plain path or `file:` URL; None for pipes and remote URLs."""
    if isinstance(source, os.PathLike):
        return Path(source)
    if source.startswith("file:"):
        return Path(url2pathname(urlparse(source).path))
    if is_pipe(source) or is_remote(source):
        return None
    return Path(os.path.expanduser(source))


def url_name(url: str) -> str:
    """The file name of a URL (its path's last part, without query)."""
    return urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]


def join_url(base: str, relative: str) -> str:
    """`relative` resolved against the URL of the file `base` (a line of a remote shard list)."""
    if is_remote(relative) or is_pipe(relative):
        return relative
    if base.lower().startswith(("http://", "https://")):
        return urljoin(base, relative)
    scheme, rest = base.split("://", 1)  # other fsspec URLs: bucket/path, joined as a POSIX path
    return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), relative))}"


def filesystem(url: str):
    """(fsspec filesystem, path inside it) of a URL; a missing protocol package is a usage error naming it."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        from glipkit.errors import GlipkitUsageError

        protocol = url.split("://", 1)[0]
        extra = {"s3": " (pip install 'glipkit[s3]')", "gs": " (pip install 'glipkit[gcs]')",
                 "gcs": " (pip install 'glipkit[gcs]')"}.get(protocol, "")
        raise GlipkitUsageError(f"cannot read {protocol}:// URLs: {e}{extra}") from None


def open_stream(source: str | os.PathLike, *, retries: int = RETRIES) -> IO[bytes]:
    """A buffered, sequential binary stream of `source`; raises OSError (FileNotFoundError when missing)."""
    if not is_remote(source):
        from webdataset.gopen import gopen

        path = local_path(source)
        return gopen(str(path) if path is not None else str(source), "rb")
    url = str(source)
    fs, path = filesystem(url)
    streaming = {"block_size": 0} if url.lower().startswith(("http://", "https://")) else {}
    # Unbuffered on purpose: a buffer that fails half-way through filling itself would lose the bytes it had.
    return _ResumingStream(url, lambda: fs.open(path, "rb", **streaming), retries)  # type: ignore[return-value]


class _ResumingStream(io.RawIOBase):
    """A remote file read front to back; a failed read reopens it and skips to where it stopped."""

    def __init__(self, url: str, opener: Callable[[], IO[bytes]], retries: int):
        self.url, self._opener, self._retries = url, opener, retries
        self._pos = 0
        self._file: IO[bytes] | None = None
        self._file = self._retrying(self._opener)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._retrying(lambda: self._current().read(len(buffer)))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _current(self) -> IO[bytes]:
        if self._file is None:
            self._file = self._reopen()
        return self._file

    def _reopen(self) -> IO[bytes]:
        handle = self._opener()
        try:
            self._skip(handle)
        except BaseException:
            handle.close()
            raise
        return handle

    def _skip(self, handle: IO[bytes]) -> None:
        """Move a fresh handle to where the last one stopped: seek, or read up to there (a streamed response)."""
        try:
            handle.seek(self._pos)
            return
        except (ValueError, OSError, io.UnsupportedOperation):
            pass
        left = self._pos
        while left:
            chunk = handle.read(min(left, 1 << 20))
            if not chunk:
                raise EOFError(f"the file is shorter on reopening ({self._pos - left} of {self._pos} bytes)")
            left -= len(chunk)

    def _retrying(self, action):
        for attempt in range(self._retries + 1):
            try:
                return action()
            except _PERMANENT:
                raise
            except Exception as e:  # noqa: BLE001 - network stacks raise their own types (aiohttp, botocore)
                error = e
                self._drop()
                if attempt < self._retries:
                    time.sleep(RETRY_PAUSE_S * 2**attempt)
        raise StreamError(f"read failed at byte {self._pos} after {self._retries} retries: "
                          f"{type(error).__name__}: {error}") from None

    def _drop(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
            self._file = None

    def close(self) -> None:
        self._drop()
        super().close()
