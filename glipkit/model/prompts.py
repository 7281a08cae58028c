"""Prompts and positive maps: class names -> prompt text, character spans -> token sets (GLIP_SPEC.md §4.2-4.4, §7.5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
from torch import Tensor

Span = tuple[int, int]
PhraseSpans = Union[Span, Sequence[Span]]  # one phrase: a span, or several whose tokens are united


def clean_name(name: str) -> str:
    """GLIP's `clean_name`: drop `(...)`, underscores become spaces, double spaces become single (§4.3)."""
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    return re.sub(r"  ", " ", name)


def build_detection_prompt(
    names: Sequence[str],
    separator: str = ". ",
    prefixes: Sequence[str] | None = None,
    suffixes: Sequence[str] | None = None,
    clean: bool = True,
) -> tuple[str, list[Span]]:
    """Join class names into GLIP's evaluation prompt and return it with each name's character span (§4.3).

    `"person. bicycle. car"`: no trailing separator. With prompt engineering, class i is written
    `prefix + name + suffix` and only the name is positive.
    """
    parts: list[str] = []
    spans: list[Span] = []
    position = 0
    for i, raw in enumerate(names):
        name = clean_name(raw) if clean else raw
        prefix = prefixes[i] if prefixes else ""
        suffix = suffixes[i] if suffixes else ""
        start = position + len(prefix)
        spans.append((start, start + len(name)))
        piece = prefix + name + suffix
        parts.append(piece)
        position += len(piece)
        if i + 1 < len(names):
            position += len(separator)
    return separator.join(parts), spans


def split_phrases(prompt: str) -> list[Span]:
    """Spans of the '.'-separated pieces of a prompt ("person. dog" -> two phrases), whitespace trimmed."""
    spans = []
    position = 0
    for piece in prompt.split("."):
        stripped = piece.strip()
        if stripped:
            start = position + piece.index(stripped)
            spans.append((start, start + len(stripped)))
        position += len(piece) + 1
    return spans


def chunk_indices(count: int, chunk_size: int) -> list[list[int]]:
    """Consecutive chunks of `chunk_size` class indices, as TEST.CHUNKED_EVALUATION splits a vocabulary (§7.5)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return [list(range(start, min(start + chunk_size, count))) for start in range(0, count, chunk_size)]


def span_to_tokens(encoding, span: Span, batch_index: int = 0) -> tuple[int, int] | None:
    """First and last token (inclusive) of a character span, with GLIP's ±1/±2 fallback (§4.4); None if unmappable."""
    start, end = span
    first = last = None
    for position in (start, start + 1, start + 2):
        first = _char_to_token(encoding, batch_index, position)
        if first is not None:
            break
    for position in (end - 1, end - 2, end - 3):
        last = _char_to_token(encoding, batch_index, position)
        if last is not None:
            break
    if first is None or last is None or last < first:
        return None
    return first, last


def _char_to_token(encoding, batch_index: int, position: int) -> int | None:
    if position < 0:
        return None
    try:
        return encoding.char_to_token(batch_index, position)
    except (IndexError, ValueError, TypeError):
        return None


@dataclass
class EncodedPrompts:
    """A tokenized batch of prompts with one positive map per prompt.

    positive_maps[b] is (P_b, L) float 0/1: row j marks the tokens of phrase j of prompt b.
    unmapped[b] lists the phrases of prompt b whose span could not be mapped (e.g. truncated past L tokens);
    their rows are all zero, so they never produce detections.
    """

    input_ids: Tensor
    attention_mask: Tensor
    positive_maps: list[Tensor]
    unmapped: list[list[int]] = field(default_factory=list)


def _is_span(phrase) -> bool:
    return len(phrase) == 2 and all(isinstance(v, int) for v in phrase)


def encode_prompts(
    tokenizer,
    prompts: Sequence[str],
    spans: Sequence[Sequence[PhraseSpans]],
    max_length: int = 256,
    pad_to_max_length: bool = False,
) -> EncodedPrompts:
    """Tokenize prompts (truncating at `max_length`) and map each phrase span to its tokens (§4.2, §4.4).

    A phrase is one span or several (a Flickr30K phrase, §7.6): its row is the union of their tokens, and it is
    unmapped when none of them maps.

    The official code pads every prompt to 256 tokens; padding to the longest prompt of the batch gives
    the same outputs on real tokens and is much cheaper, so it is the default here.
    """
    encoding = tokenizer(
        list(prompts),
        max_length=max_length,
        truncation=True,
        padding="max_length" if pad_to_max_length else "longest",
        return_tensors="pt",
    )
    length = encoding["input_ids"].shape[1]
    positive_maps = []
    unmapped: list[list[int]] = []
    for b, prompt_spans in enumerate(spans):
        positive_map = torch.zeros(len(prompt_spans), length)
        missing = []
        for j, phrase in enumerate(prompt_spans):
            mapped = False
            for span in ([phrase] if _is_span(phrase) else phrase):
                tokens = span_to_tokens(encoding, span, b)
                if tokens is not None:
                    positive_map[j, tokens[0] : tokens[1] + 1] = 1.0
                    mapped = True
            if not mapped:
                missing.append(j)
        positive_maps.append(positive_map)
        unmapped.append(missing)
    return EncodedPrompts(encoding["input_ids"], encoding["attention_mask"], positive_maps, unmapped)


# §7.5: GLIP's chunk size for vocabularies longer than the token limit (the README's LVIS command).
DEFAULT_CHUNK_SIZE = 40


@dataclass(frozen=True)
class VocabularyChunk:
    """One prompt of a class vocabulary: its text, each class's span in it, and the index of its first class."""

    text: str
    spans: tuple[Span, ...]
    offset: int


def vocabulary_chunks(
    tokenizer,
    names: Sequence[str],
    prefixes: Sequence[str] | None = None,
    suffixes: Sequence[str] | None = None,
    chunk_size: int | None = None,
    max_length: int = 256,
    clean: bool = True,
    separator: str = ". ",
) -> list[VocabularyChunk]:
    """GLIP detection prompts for a class vocabulary, in chunks of `chunk_size` consecutive classes (§4.3, §7.5).

    `chunk_size` None: one prompt when the whole vocabulary fits in `max_length` tokens, else chunks of 40 as
    GLIP's LVIS evaluation. Raises ValueError naming the first class that does not fit in its chunk.
    """
    names = list(names)
    if not names:
        raise ValueError("the class list is empty")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")

    def prompt(indices: Sequence[int]) -> tuple[str, list[Span]]:
        return build_detection_prompt(
            [names[i] for i in indices], separator,
            [prefixes[i] for i in indices] if prefixes else None,
            [suffixes[i] for i in indices] if suffixes else None,
            clean=clean,
        )

    if chunk_size is None:
        text, _ = prompt(range(len(names)))
        chunk_size = len(names) if len(tokenizer(text)["input_ids"]) <= max_length else DEFAULT_CHUNK_SIZE
    chunks = []
    for indices in chunk_indices(len(names), chunk_size):
        text, spans = prompt(indices)
        encoded = encode_prompts(tokenizer, [text], [spans], max_length)
        if encoded.unmapped[0]:
            first = indices[encoded.unmapped[0][0]]
            raise ValueError(f"class '{names[first]}' does not fit in {max_length} tokens within its chunk of "
                             f"{len(indices)} classes; use a smaller chunk size")
        chunks.append(VocabularyChunk(text, tuple(spans), indices[0]))
    return chunks


@dataclass
class PromptChunk:
    """One text pass over an image batch: a prompt and its phrases' spans per image, and each image's label offset
    (the index its first phrase has among all the image's phrases)."""

    prompts: list[str]
    spans: list[list[PhraseSpans]]
    label_offsets: list[int]

    @classmethod
    def for_captions(cls, captions: Sequence[str], spans: Sequence[Sequence[PhraseSpans]]) -> "PromptChunk":
        """Caption mode: each image's caption is its prompt and its phrases' spans are the positives."""
        return cls(list(captions), [list(s) for s in spans], [0] * len(captions))

    @classmethod
    def for_vocabulary(cls, chunks: Sequence[VocabularyChunk], batch_size: int) -> list["PromptChunk"]:
        """Classes mode: one text pass per vocabulary chunk, the same prompt for every image of the batch."""
        return [cls([c.text] * batch_size, [list(c.spans)] * batch_size, [c.offset] * batch_size) for c in chunks]
