"""Noun-phrase extraction from captions with exact character spans (`caption[start:end] == text`).

Extractors:
  spacy       `doc.noun_chunks` of a spaCy pipeline with only tok2vec, tagger, attribute_ruler and parser;
              chunks made only of pronouns / stop words are dropped.
  glip-regex  the official GLIP demo's chunker, NP = <DT>?<JJ.*>*<NN.*>+, over spaCy's fine-grained tags
              (tok2vec + tagger only; no NLTK).
  ngrams      OWL-ST's word n-grams up to length N (10), at most 300 per caption, without n-grams made only of
              stop words and generic web words (photo, stock, image, jpg, ...). Needs no spaCy model.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

from glipkit.text.spacy_models import DEFAULT_SPACY_MODEL, resolve_spacy_model

EXTRACTORS = ("spacy", "glip-regex", "ngrams")
NGRAM_DEFAULT_MAX_PHRASES = 300

DETERMINER_TAGS = frozenset({"DT", "PDT", "WDT"})
DETERMINER_WORDS = frozenset(
    "a an the this that these those some any each every either neither no another such what which whatever".split()
)
# Words that name the medium, not what is in it; an n-gram made only of these (and stop words) is dropped.
GENERIC_WEB_WORDS = frozenset(
    """
    photo photos photograph photographs photography photographer pic pics picture pictures image images img
    stock royalty royalty-free free vector vectors illustration illustrations clipart clip art artwork render
    background backgrounds wallpaper wallpapers hd uhd 4k 8k hq jpg jpeg png gif webp svg eps file files
    download downloads thumbnail thumbnails preview copyright shutterstock getty gettyimages istock alamy
    dreamstime 123rf depositphotos adobe editorial view views closeup close-up high resolution quality
    """.split()
)


class Phrase(NamedTuple):
    """A phrase of a caption: `caption[start:end] == text` (character offsets)."""

    text: str
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class PhraseOptions:
    """Post-processing shared by all extractors."""

    lowercase: bool = False  # phrase text (and the caption it indexes) lowercased; offsets unchanged
    strip_determiners: bool = False  # drop leading determiners ("the red car" -> "red car"), moving `start`
    max_phrases: int | None = None  # keep the first N; None: 300 for ngrams, no limit otherwise
    min_chars: int = 1  # drop phrases shorter than this
    ngram_max_n: int = 10  # longest n-gram of the ngrams extractor


def lower_same_length(text: str) -> str:
    """`text.lower()`, except that characters whose lowercase has another length (e.g. 'İ') are kept as they
    are, so that character offsets stay valid."""
    lowered = text.lower()
    if len(lowered) == len(text):  # every character lowercased to exactly one character
        return lowered
    return "".join(low if len(low) == 1 else ch for ch, low in ((c, c.lower()) for c in text))


# Emoji and symbols at a phrase's ends are trimmed from its span: other symbols (So), modifiers such as skin
# tones (Sk), zero-width joiners and tags (Cf), keycaps (Me) and variation selectors.
_SYMBOL_CATEGORIES = frozenset({"So", "Sk", "Cf", "Me"})


def _is_symbol(ch: str) -> bool:
    return (ch.isspace() or unicodedata.category(ch) in _SYMBOL_CATEGORIES
            or "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef")


def _without_symbols(caption: str, start: int, end: int) -> tuple[int, int]:
    """The span without emoji, symbols and spaces at either end (empty when it held nothing else)."""
    while start < end and _is_symbol(caption[start]):
        start += 1
    while end > start and _is_symbol(caption[end - 1]):
        end -= 1
    return start, end


def _only_stop_words(text: str) -> bool:
    from spacy.lang.en.stop_words import STOP_WORDS

    words = [w.lower() for w in _WORD.findall(text)]
    return all(w in STOP_WORDS or w in DETERMINER_WORDS for w in words)


class PhraseExtractor:
    """Base class: turns captions into lists of Phrase with exact spans."""

    name = ""
    version = "1"  # bump when the output for the same input and settings changes
    default_max_phrases: int | None = None  # used when options.max_phrases is None
    trims_symbols = True  # emoji / symbols at a phrase's ends are trimmed from its span

    def __init__(self, options: PhraseOptions | None = None):
        self.options = options or PhraseOptions()

    def spans(self, captions: Sequence[str], batch_size: int) -> Iterator[list[tuple[int, int]]]:
        """Candidate (start, end) spans per caption, in output order, before the shared options apply."""
        raise NotImplementedError

    def extract(self, captions: Iterable[str], batch_size: int = 256) -> list[list[Phrase]]:
        """Phrases of each caption, in caption order. Repeated captions (common in web data) are parsed once."""
        captions = list(captions)
        unique = list(dict.fromkeys(captions))
        if len(unique) < len(captions):
            found = dict(zip(unique, self._extract(unique, batch_size)))
            return [list(found[c]) for c in captions]
        return self._extract(captions, batch_size)

    def _extract(self, captions: list[str], batch_size: int) -> list[list[Phrase]]:
        max_phrases = self.options.max_phrases if self.options.max_phrases is not None else self.default_max_phrases
        min_chars = self.options.min_chars
        out: list[list[Phrase]] = []
        for caption, spans in zip(captions, self.spans(captions, batch_size), strict=True):
            source = lower_same_length(caption) if self.options.lowercase else caption
            phrases: list[Phrase] = []
            seen: set[tuple[int, int]] = set()
            for span in spans:
                trimmed = _without_symbols(caption, *span)
                if trimmed[0] == trimmed[1] or (trimmed != tuple(span) and _only_stop_words(caption[slice(*trimmed)])):
                    continue  # "🚀", and "that 😂" which is "that": nothing to ground
                start, end = trimmed if self.trims_symbols else span
                if end - start < min_chars or (start, end) in seen:
                    continue
                seen.add((start, end))
                phrases.append(Phrase(source[start:end], start, end))
                if max_phrases is not None and len(phrases) >= max_phrases:
                    break
            out.append(phrases)
        return out

    def settings(self) -> dict[str, Any]:
        """What determines the output: recorded in the Parquet metadata."""
        return {"extractor": self.name, "extractor_version": self.version, "options": asdict(self.options)}


class _SpacyExtractor(PhraseExtractor):
    """Shared loading of a spaCy pipeline restricted to the components an extractor needs."""

    components: tuple[str, ...] = ()

    def __init__(self, options: PhraseOptions | None = None, spacy_model: str = DEFAULT_SPACY_MODEL):
        super().__init__(options)
        import spacy

        self.spacy_model = spacy_model
        self.resolved_model = resolve_spacy_model(spacy_model)
        available = _pipeline_components(self.resolved_model)
        missing = [c for c in self.components if c != "attribute_ruler" and c not in available]
        if missing:
            from glipkit.errors import GlipkitUsageError

            raise GlipkitUsageError(
                f"spaCy model '{spacy_model}' has no {', '.join(missing)} component, which --extractor {self.name} needs"
            )
        self.nlp = spacy.load(self.resolved_model, exclude=[c for c in available if c not in self.components])

    def settings(self) -> dict[str, Any]:
        import spacy

        meta = self.nlp.meta
        return {
            **super().settings(),
            "spacy_version": spacy.__version__,
            "spacy_model": self.spacy_model,
            "spacy_model_package": self.resolved_model,
            "spacy_model_name": f"{meta.get('lang', '')}_{meta.get('name', '')}",
            "spacy_model_version": meta.get("version"),
            "spacy_pipeline": list(self.nlp.pipe_names),
        }

    def _strip(self, tokens) -> tuple[int, int] | None:
        """Char span of `tokens` without surrounding space/punctuation (and leading determiners if asked)."""
        i, j = 0, len(tokens)
        while i < j and (tokens[i].is_space or tokens[i].is_punct):
            i += 1
        while j > i and (tokens[j - 1].is_space or tokens[j - 1].is_punct):
            j -= 1
        if self.options.strip_determiners:
            while i < j and (tokens[i].tag_ in DETERMINER_TAGS or tokens[i].lower_ in DETERMINER_WORDS):
                i += 1
                while i < j and tokens[i].is_space:
                    i += 1
        if i >= j:
            return None
        return tokens[i].idx, tokens[j - 1].idx + len(tokens[j - 1].text)


def _pipeline_components(model: str) -> list[str]:
    """All component names of an installed pipeline (package or directory), read from its meta.json."""
    from pathlib import Path

    import spacy.util

    path = Path(model) if Path(model).is_dir() else spacy.util.get_package_path(model)
    meta = spacy.util.get_model_meta(path)
    if not meta.get("components") and not meta.get("pipeline"):
        # A package's data lives in a versioned subdirectory holding the full meta.
        for sub in path.iterdir():
            if (sub / "meta.json").exists():
                meta = spacy.util.get_model_meta(sub)
                break
    return list(meta.get("components") or meta.get("pipeline") or [])


class SpacyNounChunks(_SpacyExtractor):
    """`doc.noun_chunks`, without chunks made only of pronouns or stop words."""

    name = "spacy"
    components = ("tok2vec", "tagger", "attribute_ruler", "parser")

    def spans(self, captions: Sequence[str], batch_size: int) -> Iterator[list[tuple[int, int]]]:
        for doc in self.nlp.pipe(captions, batch_size=batch_size):
            spans = []
            for chunk in doc.noun_chunks:
                if all(t.pos_ == "PRON" or t.is_stop or t.is_punct or t.is_space for t in chunk):
                    continue
                span = self._strip(chunk)
                if span is not None:
                    spans.append(span)
            yield spans


class GlipRegexChunks(_SpacyExtractor):
    """The GLIP demo's NP grammar `<DT>?<JJ.*>*<NN.*>+`, leftmost-longest, over spaCy's tag_ (Penn tags)."""

    name = "glip-regex"
    components = ("tok2vec", "tagger")
    trims_symbols = False  # the demo grammar's spans exactly; phrases of only emoji/symbols are still dropped

    def spans(self, captions: Sequence[str], batch_size: int) -> Iterator[list[tuple[int, int]]]:
        for doc in self.nlp.pipe(captions, batch_size=batch_size):
            tags = [t.tag_ for t in doc]
            spans = []
            i, n = 0, len(tags)
            while i < n:
                j = i + 1 if tags[i] == "DT" else i
                while j < n and tags[j].startswith("JJ"):
                    j += 1
                k = j
                while k < n and tags[k].startswith("NN"):
                    k += 1
                if k > j:  # at least one noun: a chunk doc[i:k]
                    span = self._strip(doc[i:k])
                    if span is not None:
                        spans.append(span)
                    i = k
                else:
                    i += 1
            yield spans


# A word: letters/digits, optionally joined by an apostrophe, hyphen or dot ("well-known", "don't", "3.5").
_WORD = re.compile(r"\w+(?:[-'’.]\w+)*")


class WordNgrams(PhraseExtractor):
    """OWL-ST word n-grams (n = 1..N, shortest first) inside runs of words separated only by whitespace."""

    name = "ngrams"
    default_max_phrases = NGRAM_DEFAULT_MAX_PHRASES

    def __init__(self, options: PhraseOptions | None = None, spacy_model: str | None = None):
        super().__init__(options)
        from spacy.lang.en.stop_words import STOP_WORDS

        self.stop_words = frozenset(STOP_WORDS) | {"'s", "s"}
        self.drop_words = self.stop_words | GENERIC_WEB_WORDS

    def spans(self, captions: Sequence[str], batch_size: int) -> Iterator[list[tuple[int, int]]]:
        max_n = self.options.ngram_max_n
        limit = self.options.max_phrases if self.options.max_phrases is not None else self.default_max_phrases
        lowercase, strip = self.options.lowercase, self.options.strip_determiners
        min_chars = self.options.min_chars
        for caption in captions:
            # Runs of words separated only by whitespace; n-grams never cross punctuation.
            runs: list[list[re.Match]] = []
            last_end = -1
            for m in _WORD.finditer(caption):
                if last_end >= 0 and caption[last_end : m.start()].isspace():
                    runs[-1].append(m)
                else:
                    runs.append([m])
                last_end = m.end()
            prepared = []
            for run in runs:
                words = [m.group().lower() for m in run]
                kept = [0]  # prefix counts of words that are neither stop words nor generic web words
                for w in words:
                    kept.append(kept[-1] + (w not in self.drop_words))
                prepared.append((run, words, kept))
            spans: list[tuple[int, int]] = []
            texts: set[str] = set()
            for n in range(1, max_n + 1):
                for run, words, kept in prepared:
                    for i in range(len(run) - n + 1):
                        if kept[i + n] == kept[i]:
                            continue  # only stop words / generic words
                        if strip and words[i] in DETERMINER_WORDS:
                            continue  # the same n-gram without its determiner is generated as well
                        start, end = run[i].start(), run[i + n - 1].end()
                        if end - start < min_chars:
                            continue
                        text = caption[start:end]
                        text = lower_same_length(text) if lowercase else text
                        if text in texts:  # queries are texts: keep the first occurrence of each
                            continue
                        texts.add(text)
                        spans.append((start, end))
                if limit is not None and len(spans) >= limit:
                    break
            yield spans


_EXTRACTOR_CLASSES: dict[str, type[PhraseExtractor]] = {
    "spacy": SpacyNounChunks,
    "glip-regex": GlipRegexChunks,
    "ngrams": WordNgrams,
}


@functools.lru_cache(maxsize=8)
def get_extractor(
    name: str = "spacy", options: PhraseOptions | None = None, spacy_model: str = DEFAULT_SPACY_MODEL
) -> PhraseExtractor:
    """The extractor `name` (one of EXTRACTORS), built once per process and options (spaCy loads once)."""
    if name not in _EXTRACTOR_CLASSES:
        raise ValueError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    return _EXTRACTOR_CLASSES[name](options or PhraseOptions(), spacy_model=spacy_model)  # type: ignore[call-arg]


def extract_phrases(
    captions: Iterable[str],
    extractor: str | PhraseExtractor = "spacy",
    options: PhraseOptions | None = None,
    *,
    spacy_model: str = DEFAULT_SPACY_MODEL,
    batch_size: int = 256,
) -> list[list[Phrase]]:
    """Phrases with exact spans for each caption; the extractor is cached per process (DataLoader workers)."""
    if isinstance(extractor, str):
        extractor = get_extractor(extractor, options or PhraseOptions(), spacy_model)
    elif options is not None and options != extractor.options:
        raise ValueError("pass options either to the extractor or to extract_phrases, not both")
    return extractor.extract(captions, batch_size=batch_size)
