"""A class vocabulary from `--classes`: inline names or a file."""

from __future__ import annotations

from pathlib import Path

from glipkit.errors import GlipkitUsageError
from glipkit.files import read_json


def parse_class_list(value: str) -> list[str]:
    """Classes from `--classes`: a file (.json list, COCO json with `categories`, or text with one class a
    line) or an inline "person. dog. traffic light" (commas work too when there is no '.')."""
    path = Path(value)
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = read_json(path, "class file")
            if isinstance(data, dict) and "categories" in data:
                data = [c["name"] for c in sorted(data["categories"], key=lambda c: c.get("id", 0))]
            if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
                raise GlipkitUsageError(f"{path}: expected a JSON list of class names or COCO json with 'categories'")
            names = [c.strip() for c in data]
        else:
            text = path.read_text(encoding="utf-8")
            lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
            names = lines if len(lines) > 1 else parse_class_list(lines[0]) if lines else []
    else:
        separator = "." if "." in value else ","
        names = [c.strip() for c in value.split(separator)]
    names = [n for n in names if n]
    if not names:
        raise GlipkitUsageError(f"--classes {value!r} names no class")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GlipkitUsageError(f"--classes lists {duplicates[0]!r} more than once")
    return names
