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


def read_class_aliases(value: str | Path) -> dict[str, list[str]]:
    """The one reader of `--classes`: class name -> phrases merged into it. A file: text with one class a line
    (`name`, or `name: alias, alias`; a single line may list classes separated by '.' or ','), a JSON list of
    names, a JSON object {name: [aliases]}, or COCO json (its categories); or inline names separated by '.' or ','
    ("person. dog. traffic light")."""
    value = str(value)
    path = Path(value)
    if path.is_file():
        lines = _file_entries(path)
    elif path.is_dir():
        raise GlipkitUsageError(f"--classes {value}: is a directory; give a class file or inline classes")
    elif looks_like_file(value):
        raise GlipkitUsageError(f"--classes {value}: no such file (inline classes look like 'person. dog')")
    else:
        lines = [(name, []) for name in SEPARATORS.split(value)]
    classes: dict[str, list[str]] = {}
    for name, aliases in lines:
        name = name.strip()
        if not name:
            continue
        if name in classes:
            raise GlipkitUsageError(f"--classes lists {name!r} more than once")
        classes[name] = [a.strip() for a in aliases if a.strip()]
    if not classes:
        raise GlipkitUsageError(f"--classes {value!r} names no class")
    return classes


def parse_class_list(value: str | Path) -> list[str]:
    """The class names of `--classes` (see read_class_aliases), in order."""
    return list(read_class_aliases(value))


def _file_entries(path: Path) -> list[tuple[str, list[str]]]:
    if path.suffix.lower() == ".json":
        data = read_json(path, "class file")
        if isinstance(data, dict) and isinstance(data.get("categories"), list):
            categories = [c for c in data["categories"] if isinstance(c, dict)]
            data = [c.get("name") for c in sorted(categories, key=lambda c: c.get("id", 0))]
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return [(str(k), [str(a) for a in v]) for k, v in data.items()]
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise GlipkitUsageError(f"{path}: expected a JSON list of class names, {{name: [aliases]}} or COCO json "
                                    "with 'categories'")
        return [(c, []) for c in data]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise GlipkitUsageError(f"class file {path} is not UTF-8 text: {error.reason}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) == 1 and ":" not in lines[0]:
        return [(name, []) for name in SEPARATORS.split(lines[0])]
    entries = []
    for line in lines:
        name, _, merged = line.partition(":")
        if not name.strip():
            raise GlipkitUsageError(f"{path}: the line {line!r} needs a class name before ':'")
        entries.append((name, merged.split(",")))
    return entries
