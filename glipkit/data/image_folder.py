"""A folder of plain images (with optional same-stem `.txt` captions) as WebDataset shards, so `pseudo-label
--images DIR` runs the same job as `--shards`.

The shards are written once under `<out>/_images/` (`<folder>-00000.tar`, ... of `per_shard` images, in sorted
path order) and kept: the label tables' `shard` column points at them, so `export` and `show` find the images.
A re-run finds them already whole and leaves them alone. Keys are the paths under DIR without the extension,
with `/` and `.` made `_` (WebDataset splits keys at the first dot); an image without a caption gets an empty
`.txt` (fine for `--prompt-mode classes`).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from glipkit.data.images import IMAGE_EXTENSIONS
from glipkit.data.shards import write_shard
from glipkit.errors import GlipkitUsageError

FOLDER_SHARDS = "_images"


def folder_images(folder: Path) -> list[Path]:
    """The image files under `folder` (recursively, hidden files skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def folder_key(folder: Path, image: Path) -> str:
    return image.relative_to(folder).with_suffix("").as_posix().replace("/", "_").replace(".", "_")


def _members(image: Path, folder: Path) -> dict[str, bytes]:
    caption = image.with_suffix(".txt")
    text = caption.read_bytes() if caption.is_file() else b""
    return {image.suffix.lower().lstrip(".").replace("jpeg", "jpg"): image.read_bytes(), "txt": text}


def _same_members(shard: Path, expected: list[tuple[str, dict[str, bytes]]]) -> bool:
    try:
        with tarfile.open(shard) as tar:
            found = [(m.name, m.size) for m in tar.getmembers()]
    except (OSError, tarfile.TarError):
        return False
    return found == [(f"{key}.{ext}", len(data)) for key, members in expected for ext, data in members.items()]


def folder_shards(folder: str | os.PathLike, out_dir: str | os.PathLike, per_shard: int = 1000) -> list[Path]:
    """Pack the images of `folder` into shards under `<out_dir>/_images/`; returns their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images = folder_images(folder)
    if not images:
        raise GlipkitUsageError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    keys = [folder_key(folder, p) for p in images]
    clash = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if clash is not None:
        raise GlipkitUsageError(f"{folder}: two images give the key {clash!r} (same name, other extension?)")
    shards = []
    for start in range(0, len(images), per_shard):
        samples = [(key, _members(image, folder)) for key, image in
                   zip(keys[start:start + per_shard], images[start:start + per_shard])]
        path = Path(out_dir) / FOLDER_SHARDS / f"{folder.resolve().name}-{start // per_shard:05d}.tar"
        if not _same_members(path, samples):
            write_shard(path, samples)
        shards.append(path.resolve())
    return shards
