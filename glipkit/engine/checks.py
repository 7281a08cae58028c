"""Checks every command runs on its options before any slow work (a model load): one error line, nothing written.

`preflight` is the one entry point: the device exists and each output directory can be written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from glipkit.errors import GlipkitUsageError


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """GlipkitUsageError unless `path` is, or can be made, a directory this process may write into.

    Creates the missing directories and a probe file to find out (a root user passes os.access checks on /proc
    and read-only mounts), then removes what it made. URLs (s3://...) are left to the job."""
    from glipkit.data.streams import local_path

    path = local_path(os.fspath(path))
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise GlipkitUsageError(f"{flag} {path} is a file; give a directory")
    missing = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise GlipkitUsageError(f"{flag} {path}: cannot write there, {parent} is a file")
    try:
        _probe(path)
    except OSError as error:
        # mkdir in /proc and the like fails with ENOENT; "No such file or directory" would name the wrong problem
        refused = error.errno == errno.ENOENT and parent.is_dir()
        reason = f"{parent} accepts no new files" if refused else (error.strerror or type(error).__name__).lower()
        raise GlipkitUsageError(f"{flag} {path}: cannot write there ({reason})") from None
    finally:
        for directory in missing:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break


def _probe(path: Path, attempts: int = 5) -> None:
    """Make `path` and a temporary file in it. Another process checking the same new directory (the ranks of one
    torchrun job) may remove it between our mkdir and our file: then make it again."""
    for attempt in range(attempts):
        path.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryFile(dir=path):
                return
        except FileNotFoundError:
            if path.is_dir() or attempt == attempts - 1:
                raise


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """GlipkitUsageError unless a file can be written at `path` (not a directory; its directory writable)."""
    path = Path(path)
    if path.is_dir():
        raise GlipkitUsageError(f"{flag} {path} is a directory; give a file name")
    check_out_dir(path.parent, flag)


def preflight(device: Optional[str] = None, out_dirs: Mapping[str, Optional[str | os.PathLike]] = (),
              out_files: Mapping[str, Optional[str | os.PathLike]] = ()) -> None:
    """The checks of a command's options, before it loads a model: `--device` exists here, and each output
    (flag -> path; None: not given) can be written."""
    from glipkit.engine.runtime import check_device

    for flag, path in dict(out_dirs).items():
        if path is not None:
            check_out_dir(path, flag)
    for flag, path in dict(out_files).items():
        if path is not None:
            check_output_file(path, flag)
    if device is not None:
        check_device(device)
