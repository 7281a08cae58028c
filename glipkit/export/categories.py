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

from glipkit.text.class_list import read_class_aliases

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
    """A classes file (text `name` or `name: alias, alias` lines, a JSON list, {name: [aliases]} or COCO json),
    read by the one `--classes` reader, text/class_list.read_class_aliases."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path}")
    return CategoryMap.from_classes(read_class_aliases(path))
