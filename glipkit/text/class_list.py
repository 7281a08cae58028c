"""A class vocabulary from `--classes`: inline names or a file."""

from __future__ import annotations

import re
from pathlib import Path

from glipkit.errors import GlipkitUsageError
from glipkit.files import read_json

CLASSES_HELP = ("Classes: inline 'person. dog. traffic light' (',' separates too) or a file: one class a line, "
                "a JSON list, or COCO json categories.")
# A value with one of these endings (or a '/') names a file; a missing one is an error, not inline classes.
CLASS_FILE_SUFFIXES = (".txt", ".json", ".yaml", ".yml", ".csv", ".tsv", ".names", ".list", ".lst")
SEPARATORS = re.compile(r"[.,]")


def looks_like_file(value: str) -> bool:
    """True for a value meant as a path: it holds a '/' or ends like a class file, with no space in it."""
    return not any(c.isspace() for c in value) and ("/" in value or value.lower().endswith(CLASS_FILE_SUFFIXES))


def parse_class_list(value: str) -> list[str]:
    """Classes from `--classes`: a file (.json list, COCO json with `categories`, or text with one class a
    line) or inline names separated by '.' or ',' ("person. dog. traffic light")."""
    path = Path(value)
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = read_json(path, "class file")
            if isinstance(data, dict) and isinstance(data.get("categories"), list):
                categories = [c for c in data["categories"] if isinstance(c, dict)]
                data = [c.get("name") for c in sorted(categories, key=lambda c: c.get("id", 0))]
            if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
                raise GlipkitUsageError(f"{path}: expected a JSON list of class names or COCO json with 'categories'")
            names = [c.strip() for c in data]
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise GlipkitUsageError(f"class file {path} is not UTF-8 text: {error.reason}") from None
            lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            names = lines if len(lines) > 1 else SEPARATORS.split(lines[0]) if lines else []
    elif path.is_dir():
        raise GlipkitUsageError(f"--classes {value}: is a directory; give a class file or inline classes")
    elif looks_like_file(value):
        raise GlipkitUsageError(f"--classes {value}: no such file (inline classes look like 'person. dog')")
    else:
        names = SEPARATORS.split(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise GlipkitUsageError(f"--classes {value!r} names no class")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GlipkitUsageError(f"--classes lists {duplicates[0]!r} more than once")
    return names
