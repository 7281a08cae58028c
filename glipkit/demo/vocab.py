"""A small WordPiece `vocab.txt`, for tokenizers that work offline (tests, examples, benchmarks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from glipkit.demo.samples import BACKGROUNDS, CATEGORIES, COLORS, COUNT_WORDS, PLURALS

SPECIAL_TOKENS = ["[PAD]"] + [f"[unused{i}]" for i in range(5)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = ".,;:!?'\"-()/&%$#@*+=<>[]{}_"
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def caption_words() -> list[str]:
    """Every word the demo captions and class names use, lower-cased, in a fixed order."""
    texts = list(COLORS) + list(CATEGORIES) + list(PLURALS.values()) + list(COUNT_WORDS.values())
    texts += [f"{prep} {place}" for prep, place, _ in BACKGROUNDS.values()]
    texts += ["a an the photo of close-up with and to left right above below front in on"]
    return list(dict.fromkeys(word for text in texts for word in re.findall(r"[a-z]+", text.lower())))


def write_vocab(directory: str | Path, words: Iterable[str] | None = None, *, punctuation: str = PUNCTUATION) -> Path:
    """Write `directory/vocab.txt`: special tokens, `punctuation`, letters and digits (also as `##` pieces, so any
    word still tokenizes), then `words` (default: the demo captions' words); returns the directory.

    Load it with `BertTokenizerFast.from_pretrained(directory)` (or `--tokenizer DIR`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = SPECIAL_TOKENS + list(punctuation) + list(CHARACTERS) + ["##" + c for c in CHARACTERS]
    tokens += caption_words() if words is None else list(words)
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return directory
