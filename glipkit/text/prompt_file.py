"""User prompt-engineering files: class name -> prefix / name / suffix (GLIP_SPEC.md §4.3 step 5).

A file is JSON (always) or YAML (when PyYAML is installed) in one of two shapes:

* a mapping by class name; a value is either a plain string (the text to write instead of the name)
  or an object with any of `prefix`, `name`, `suffix`::

      {"stingray": {"prefix": "", "name": "stingray", "suffix": ", which is flat and round"},
       "Cottontail-Rabbit": "rabbit"}

* a list in category order, GLIP's `DATASETS.CAPTION_PROMPT` form: `[{"prefix", "name", "suffix"}, ...]`.

Only the `name` part of each class is a positive span; classes the file does not mention keep their name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

_FIELDS = ("prefix", "name", "suffix")


class PromptFileError(ValueError):
    """A prompt file that cannot be read or does not fit the classes; the message names the file and entry."""


@dataclass(frozen=True)
class ClassPrompt:
    """How one class is written in a detection prompt: `prefix + name + suffix`; only `name` is positive."""

    prefix: str
    name: str
    suffix: str


@dataclass(frozen=True)
class PromptTable:
    """Parsed prompt file: entries by class name, or (GLIP list form) by category position."""

    by_name: Mapping[str, ClassPrompt] | None
    by_position: tuple[ClassPrompt, ...] | None
    source: str = "<prompts>"

    def for_classes(self, class_names: Sequence[str], strict: bool = True) -> list[ClassPrompt]:
        """One ClassPrompt per class, in the given order; unmentioned classes keep their own name.

        strict: entries naming classes that are not in `class_names` are an error (a typo would otherwise
        silently leave the prompt unchanged). The list form must have exactly one entry per class.
        """
        if self.by_position is not None:
            if len(self.by_position) != len(class_names):
                raise PromptFileError(
                    f"{self.source}: has {len(self.by_position)} prompt entries but there are "
                    f"{len(class_names)} classes; the list form needs one entry per class, in category order"
                )
            return list(self.by_position)
        table = self.by_name or {}
        if strict:
            known = set(class_names)
            unknown = [name for name in table if name not in known]
            if unknown:
                raise PromptFileError(
                    f"{self.source}: names classes that are not in the class list: {unknown[:5]} "
                    f"(known classes, e.g. {list(class_names)[:5]})"
                )
        return [table.get(name, ClassPrompt("", name, "")) for name in class_names]


def prompt_parts(prompts: Sequence[ClassPrompt]) -> tuple[list[str], list[str], list[str]]:
    """(names, prefixes, suffixes) lists, the arguments a detection-prompt builder takes."""
    return [p.name for p in prompts], [p.prefix for p in prompts], [p.suffix for p in prompts]


def _entry(value: Any, default_name: str | None, where: str) -> ClassPrompt:
    if isinstance(value, str):
        if not value:
            raise PromptFileError(f"{where}: the name is empty")
        return ClassPrompt("", value, "")
    if not isinstance(value, Mapping):
        raise PromptFileError(f"{where}: expected a string or an object with prefix/name/suffix, got {type(value).__name__}")
    extra = [k for k in value if k not in _FIELDS]
    if extra:
        raise PromptFileError(f"{where}: unknown field(s) {extra}; allowed: prefix, name, suffix")
    for key in _FIELDS:
        if key in value and not isinstance(value[key], str):
            raise PromptFileError(f"{where}: '{key}' must be a string, got {type(value[key]).__name__}")
    name = value.get("name", default_name)
    if not name:
        raise PromptFileError(f"{where}: needs a non-empty 'name' (the positive part of the prompt)")
    return ClassPrompt(value.get("prefix", ""), name, value.get("suffix", ""))


def parse_prompts(data: Any, source: str = "<prompts>") -> PromptTable:
    """Validate already-loaded prompt data (mapping or list, see the module docstring) into a PromptTable."""
    if isinstance(data, Mapping):
        table = {}
        for key, value in data.items():
            if not isinstance(key, str) or not key:
                raise PromptFileError(f"{source}: class names must be non-empty strings, got {key!r}")
            table[key] = _entry(value, key, f"{source}: class {key!r}")
        return PromptTable(by_name=table, by_position=None, source=source)
    if isinstance(data, list):
        entries = tuple(_entry(value, None, f"{source}: entry #{i}") for i, value in enumerate(data))
        return PromptTable(by_name=None, by_position=entries, source=source)
    raise PromptFileError(f"{source}: expected a mapping of class name -> prompt or a list, got {type(data).__name__}")


def read_json_or_yaml(path: str | Path, what: str, error: type[ValueError] = ValueError) -> Any:
    """A JSON or YAML file's content (YAML needs PyYAML): by extension; other extensions try JSON, then YAML.

    A missing or unreadable file raises `error` naming the file and `what` it is.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _load_yaml(text, path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if suffix == ".json":
            raise error(f"{path}: not valid JSON: {e}") from None
        return _load_yaml(text, path, what, error)


def _load_yaml(text: str, path: Path, what: str, error: type[ValueError]) -> Any:
    try:  # a declared dependency, but a broken environment still gets one clear line
        import yaml
    except ImportError:
        raise error(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the {what} as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def load_prompt_file(path: str | Path) -> PromptTable:
    """Read a JSON or YAML prompt file (by extension; other extensions try JSON, then YAML)."""
    return parse_prompts(read_json_or_yaml(path, "prompt file", PromptFileError), str(path))
