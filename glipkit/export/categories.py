"""From phrase text to a category: normalised phrases by default, or a classes file that keeps and merges them.

Normalising lowercases, collapses white space, strips surrounding punctuation and a leading article
("The  Dog." -> "dog"). A classes map matches a phrase to a class when its normalised text is the class name or
one of its aliases, or ends with one as whole words, plural `s`/`es` allowed ("two blue stars" -> "star");
the longest match wins, and phrases that match no class are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from glipkit.errors import GlipkitUsageError
from glipkit.files import read_json

_ARTICLE = re.compile(r"^(a|an|the)\s+")
_EDGE_PUNCTUATION = " \t\n.,;:!?'\"()[]{}"


def normalise_phrase(text: str) -> str:
    """Lowercase, single spaces, no surrounding punctuation, no leading article."""
    text = " ".join(text.lower().split()).strip(_EDGE_PUNCTUATION)
    return _ARTICLE.sub("", text).strip(_EDGE_PUNCTUATION)


@dataclass
class CategoryMap:
    """Category names (id = index) and how phrases reach them; `closed`: only listed names and aliases match."""

    names: list[str]
    aliases: dict[str, int] = field(default_factory=dict)  # normalised text -> category index
    closed: bool = False

    @classmethod
    def from_classes(cls, classes: dict[str, list[str]] | list[str]) -> "CategoryMap":
        """A closed map from class names, each with optional aliases (phrases merged into it)."""
        items = classes.items() if isinstance(classes, dict) else ((name, []) for name in classes)
        names, aliases = [], {}
        for name, merged in items:
            index = len(names)
            names.append(name)
            for text in [name, *merged]:
                aliases.setdefault(normalise_phrase(text), index)
        return cls(names, aliases, closed=True)

    @classmethod
    def from_phrases(cls, texts: Iterable[str]) -> "CategoryMap":
        """An open map: one category per normalised phrase text, sorted."""
        names = sorted({normalise_phrase(t) for t in texts} - {""})
        return cls(names, {n: i for i, n in enumerate(names)})

    def category(self, phrase: str) -> int | None:
        """The category index of a phrase, or None when it matches none."""
        text = normalise_phrase(phrase)
        if text in self.aliases:
            return self.aliases[text]
        if not self.closed:
            return None
        words = text.split()
        for start in range(len(words)):  # longest tail first
            tail = " ".join(words[start:])
            for candidate in (tail, tail[:-1] if tail.endswith("s") else None, tail[:-2] if tail.endswith("es")
                              else None):
                if candidate and candidate in self.aliases:
                    return self.aliases[candidate]
        return None


def read_classes_file(path: str | Path) -> CategoryMap:
    """A classes file: text with one class a line (`name` or `name: alias, alias` to merge phrases into it), a
    JSON list of names, a JSON object {name: [aliases]}, or COCO json (its categories)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path}")
    if path.suffix.lower() == ".json":
        data = read_json(path, "classes file")
        if isinstance(data, dict) and "categories" in data:
            data = [c["name"] for c in sorted(data["categories"], key=lambda c: c.get("id", 0))]
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return CategoryMap.from_classes({str(k): [str(a) for a in v] for k, v in data.items()})
        if isinstance(data, list) and all(isinstance(c, str) for c in data) and data:
            return CategoryMap.from_classes([c.strip() for c in data])
        raise GlipkitUsageError(f"{path}: expected a list of class names, {{name: [aliases]}} or COCO json")
    classes: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, merged = line.partition(":")
        if not name.strip():
            raise GlipkitUsageError(f"{path}:{number}: a class line needs a name before ':'")
        if name.strip() in classes:
            raise GlipkitUsageError(f"{path}:{number}: class {name.strip()!r} listed twice")
        classes[name.strip()] = [a.strip() for a in merged.split(",") if a.strip()]
    if not classes:
        raise GlipkitUsageError(f"{path}: names no class")
    return CategoryMap.from_classes(classes)
