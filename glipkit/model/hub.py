"""Named official checkpoints and the tokenizer, fetched from the Hugging Face Hub (GLIP_SPEC.md §10)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HUB_REPO = "GLIPModel/GLIP"
TOKENIZER = "bert-base-uncased"
WEIGHTS_DIR_ENV = "GLIPKIT_WEIGHTS_DIR"
TOKENIZER_ENV = "GLIPKIT_TOKENIZER"


@dataclass(frozen=True)
class NamedModel:
    """An official checkpoint: its short name, preset, file in the Hub repo and approximate size."""

    name: str
    preset: str
    filename: str
    size_gb: float
    description: str


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in [
        NamedModel("glip-t", "glip-t", "glip_tiny_model_o365_goldg_cc_sbu.pth", 3.71,
                   "GLIP-T, O365+GoldG+CC3M+SBU (COCO zero-shot 46.6)"),
        NamedModel("glip-t-c", "glip-t", "glip_tiny_model_o365_goldg.pth", 3.71, "GLIP-T (C), O365+GoldG (46.7)"),
        NamedModel("glip-t-a", "glip-t-a", "glip_a_tiny_o365.pth", 2.43, "GLIP-T (A), O365, no deep fusion (42.9)"),
        NamedModel("glip-l", "glip-l", "glip_large_model.pth", 6.9, "GLIP-L, FourODs+GoldG+CC12M+SBU (51.4)"),
    ]
}


class WeightsUnavailableError(RuntimeError):
    """Weights or tokenizer that cannot be found or fetched; the message is one line saying what to do."""


def cached_path(model: NamedModel) -> Path | None:
    """The local file of a named model if it is in $GLIPKIT_WEIGHTS_DIR or the Hub cache, else None."""
    directory = os.environ.get(WEIGHTS_DIR_ENV)
    if directory and (Path(directory) / model.filename).is_file():
        return Path(directory) / model.filename
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HUB_REPO, model.filename)
    return Path(found) if isinstance(found, str) else None


def download_named_model(name: str) -> Path:
    """Path of a named model's official `.pth`, downloading it into the Hub cache when needed."""
    if name not in NAMED_MODELS:
        raise WeightsUnavailableError(f"unknown model '{name}'; known: {', '.join(NAMED_MODELS)}")
    model = NAMED_MODELS[name]
    local = cached_path(model)
    if local is not None:
        return local
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HUB_REPO, model.filename))
    except Exception as error:  # offline, no network, missing file, auth: all need the same advice
        reason = type(error).__name__
        raise WeightsUnavailableError(
            f"cannot fetch {model.filename} for '{name}' ({reason}): download it from "
            f"https://huggingface.co/{HUB_REPO} and pass its path (--weights PATH / --model PATH) or put it in "
            f"${WEIGHTS_DIR_ENV}"
        ) from None


def load_tokenizer(name_or_path: str | None = None):
    """The fast BERT WordPiece tokenizer: a local directory, $GLIPKIT_TOKENIZER, or `bert-base-uncased` from the Hub."""
    from transformers import BertTokenizerFast

    source = name_or_path or os.environ.get(TOKENIZER_ENV) or TOKENIZER
    advice = (f"connect once to fetch it from the Hub, or pass a local directory holding vocab.txt "
              f"(--tokenizer DIR / ${TOKENIZER_ENV})")
    try:
        tokenizer = BertTokenizerFast.from_pretrained(source)
    except Exception as error:
        raise WeightsUnavailableError(f"cannot load tokenizer '{source}' ({type(error).__name__}): {advice}") from None
    # Offline, or built from a bare vocab file, a tokenizer can silently map every word to [UNK].
    probe = tokenizer("dog person car")["input_ids"]
    if all(token == tokenizer.unk_token_id for token in probe[1:-1]):
        raise WeightsUnavailableError(f"tokenizer '{source}' has no usable vocabulary (every word is [UNK]): {advice}")
    return tokenizer
