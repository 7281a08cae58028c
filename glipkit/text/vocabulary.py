"""A class vocabulary as GLIP prompts it: COCO-style categories (optionally prompt-engineered) -> prompt chunks (§4.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from glipkit.model.prompts import Span, VocabularyChunk, build_detection_prompt, clean_name, vocabulary_chunks
from glipkit.text.prompt_file import ClassPrompt, PromptTable

SEPARATOR = ". "  # DATASETS.SEPARATION_TOKENS of every pretrain config (§4.3 step 3)


@dataclass(frozen=True)
class ClassVocabulary:
    """The classes a detection prompt names, in label order: label i (0-based) is `category_ids[i]`.

    Class i is written `prefixes[i] + names[i] + suffixes[i]`; only `names[i]` is a positive span (§4.3 step 5).
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.category_ids)

    def prompt(self, indices: Sequence[int] | None = None) -> tuple[str, list[Span]]:
        """The prompt text of these classes (all by default) and each class's positive character span.

        §4.3: names joined by ". " with no trailing separator. With prompt engineering the separator still goes
        only *between* classes: "prefix + name + suffix, followed by SEP" (§4.3 step 5) is step 3's joining
        with each name replaced by its prefix/name/suffix, so the last class is not followed by a separator
        (the official `create_queries_and_maps` appends SEP for every class but the last, prompts or not).
        """
        indices = range(len(self)) if indices is None else indices
        return build_detection_prompt(
            [self.names[i] for i in indices], SEPARATOR,
            [self.prefixes[i] for i in indices], [self.suffixes[i] for i in indices], clean=False,
        )

    def chunks(self, tokenizer, chunk_size: int | None = None, max_length: int = 256) -> list[VocabularyChunk]:
        """The prompt chunks of `chunk_size` consecutive classes (None: one prompt when it fits, else 40; §7.5)."""
        return vocabulary_chunks(tokenizer, self.names, self.prefixes, self.suffixes, chunk_size, max_length,
                                 clean=False, separator=SEPARATOR)


def class_vocabulary(
    categories: Sequence[Mapping[str, Any]],
    prompt_table: PromptTable | None = None,
    names_override: Mapping[int, str] | None = None,
    strict: bool = True,
) -> ClassVocabulary:
    """A vocabulary from COCO-style `categories` (sorted by id, §4.3 step 1), optionally prompt-engineered.

    A class is known by its annotation name, or by `names_override[id]` (GLIP's OVERRIDE_CATEGORY, ODinW); the
    prompt table is looked up by that name. Names not written by the table are cleaned with GLIP's `clean_name`
    (§4.3 step 2); table text is used as written, as the official CAPTION_PROMPT entries are.
    `strict`: table entries naming no class are an error.
    """
    if not categories:
        raise ValueError("the annotations have no categories: nothing to prompt for")
    cats = sorted(categories, key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError("the annotations list a category id twice")
    keys = [str((names_override or {}).get(i, c["name"])) for i, c in zip(ids, cats)]
    if prompt_table is None:
        entries = [ClassPrompt("", clean_name(k), "") for k in keys]
    else:
        written = prompt_table.for_classes(keys, strict=strict)
        named = None if prompt_table.by_position is not None else set(prompt_table.by_name or {})
        entries = [p if named is None or k in named else ClassPrompt("", clean_name(k), "")
                   for k, p in zip(keys, written)]
    empty = [ids[i] for i, e in enumerate(entries) if not e.name.strip()]
    if empty:
        raise ValueError(f"category id(s) {empty[:5]} have an empty name after cleaning: nothing to ground")
    return ClassVocabulary(
        tuple(ids), tuple(e.name for e in entries), tuple(e.prefix for e in entries), tuple(e.suffix for e in entries)
    )
