"""Named official checkpoints and the tokenizer: local files and caches first, then the Hugging Face Hub (§10).

Nothing here waits on a network that is not there: when a file is not cached and the Hub (or the proxy in
front of it) does not take a TCP connection within a few seconds, or HF_HUB_OFFLINE is set, the error is one
line saying what to download and where to put it.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

HUB_REPO = "GLIPModel/GLIP"
TOKENIZER = "bert-base-uncased"
WEIGHTS_DIR_ENV = "GLIPKIT_WEIGHTS_DIR"
TOKENIZER_ENV = "GLIPKIT_TOKENIZER"
CONNECT_TIMEOUT_S = 3.0  # a Hub that does not take a connection in this time is reported as unreachable
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class NamedModel:
    """An official checkpoint: its short name, preset, file in the Hub repo and approximate size."""

    name: str
    preset: str
    filename: str
    size_gb: float
    description: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{HUB_REPO}/resolve/main/{self.filename}"


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


# ------------------------------------------------------------------------------------------------ the network


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or flag.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_unreachable(timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the Hub endpoint gives no HTTP answer within `timeout_s` (through the proxy the environment names, as
    huggingface_hub would use it), else None. Any answer, even an error status, counts as reachable."""
    from huggingface_hub import constants

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    host = urlparse(endpoint).hostname or ""
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(urlparse(endpoint).scheme)
    outcome: list[str | None] = []

    def attempt() -> None:  # in a thread: a dead DNS resolver can block longer than any socket timeout
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint + "/", method="HEAD"), timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the Hub answered
            outcome.append(None)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            outcome.append(getattr(reason, "strerror", None) or str(reason) or type(reason).__name__)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    problem = outcome[0] if outcome else f"no answer within {timeout_s:g} s"
    return None if problem is None else f"{endpoint}{f' via proxy {proxy}' if proxy else ''}: {problem}"


def require_hub(missing: str, advice: str) -> None:
    """Raise one line (`missing`, why the Hub cannot help, `advice`) when offline or the Hub is unreachable."""
    if hub_offline():
        raise WeightsUnavailableError(f"{missing}, and HF_HUB_OFFLINE is set: {advice}")
    problem = hub_unreachable()
    if problem is not None:
        raise WeightsUnavailableError(f"{missing}, and the Hub cannot be reached ({problem}): {advice}")


# ------------------------------------------------------------------------------------------------ checkpoints


def _weights_advice(model: NamedModel) -> str:
    return (f"download {model.url} ({model.size_gb:.2f} GB; `glipkit models download {model.name}` on a connected "
            f"machine) and pass the file as --model PATH, or put it in ${WEIGHTS_DIR_ENV}")


def unknown_model_message(name: str) -> str:
    """One line for a `--model` that is neither a named model nor an existing file."""
    known = ", ".join(NAMED_MODELS)
    hint = next((f"; did you mean '{n}'? (names are lower-case)" for n in NAMED_MODELS
                 if n == name.strip().lower().replace("_", "-")), "")
    return (f"unknown model '{name}'{hint}; known models: {known} (`glipkit models list`), or the path of a "
            f"{' / '.join(CHECKPOINT_SUFFIXES)} checkpoint")


def cached_path(model: NamedModel) -> Path | None:
    """The local file of a named model if it is in $GLIPKIT_WEIGHTS_DIR or the Hub cache, else None."""
    directory = os.environ.get(WEIGHTS_DIR_ENV)
    if directory and (Path(directory) / model.filename).is_file():
        return Path(directory) / model.filename
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HUB_REPO, model.filename)
    return Path(found) if isinstance(found, str) else None


def download_named_model(name: str) -> Path:
    """Path of a named model's official `.pth`: $GLIPKIT_WEIGHTS_DIR, the Hub cache, else downloaded into it."""
    from glipkit.model.weights import CheckpointError

    if name not in NAMED_MODELS:
        raise CheckpointError(unknown_model_message(name))
    model = NAMED_MODELS[name]
    local = cached_path(model)
    if local is not None:
        return local
    missing = f"{model.filename} ('{name}') is neither in ${WEIGHTS_DIR_ENV} nor in the Hugging Face cache"
    require_hub(missing, _weights_advice(model))
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HUB_REPO, model.filename))
    except Exception as error:  # missing file, auth, a dropped connection: all need the same advice
        raise WeightsUnavailableError(f"cannot fetch {model.filename} for '{name}' ({type(error).__name__}): "
                                      f"{_weights_advice(model)}") from None


def resolve_model_file(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint file `--model` names: a named official model (cached or downloaded) or an existing path."""
    from glipkit.model.weights import CheckpointError

    name = str(name_or_path)
    if name in NAMED_MODELS:
        return download_named_model(name)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if "/" in name or os.sep in name or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(unknown_model_message(name))


def missing_weights_note(name: str) -> str:
    """'; <what to download>' when `name` is a named model that is not on this machine, else ''."""
    model = NAMED_MODELS.get(name)
    if model is None or cached_path(model) is not None:
        return ""
    return f"; the weights of '{name}' are missing too: {_weights_advice(model)}"


# ------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(name_or_path: str | None = None):
    """The fast BERT WordPiece tokenizer: a local directory, $GLIPKIT_TOKENIZER, or `bert-base-uncased` from the
    Hugging Face cache, fetched from the Hub only when it is not cached."""
    from transformers import BertTokenizerFast

    source = str(name_or_path or os.environ.get(TOKENIZER_ENV) or TOKENIZER)
    advice = (f"connect once to fetch it from the Hub, or pass a local directory holding vocab.txt "
              f"(--tokenizer DIR / ${TOKENIZER_ENV})")
    local = Path(source).expanduser()
    is_dir = local.is_dir()
    looks_local = source.startswith((".", "/", "~")) or ("/" in source and local.parent.exists())
    if not is_dir and looks_local:
        raise WeightsUnavailableError(f"tokenizer directory not found: {local}")
    cached = is_dir or _tokenizer_cached(source)
    if not cached:
        require_hub(f"tokenizer '{source}' is not in the Hugging Face cache", advice)
    try:
        tokenizer = BertTokenizerFast.from_pretrained(str(local) if is_dir else source, local_files_only=cached)
    except Exception as error:
        raise WeightsUnavailableError(f"cannot load tokenizer '{source}' ({type(error).__name__}): {advice}") from None
    # Offline, or built from a bare vocab file, a tokenizer can silently map every word to [UNK].
    probe = tokenizer("dog person car")["input_ids"]
    if all(token == tokenizer.unk_token_id for token in probe[1:-1]):
        raise WeightsUnavailableError(f"tokenizer '{source}' has no usable vocabulary (every word is [UNK]): {advice}")
    return tokenizer


def _tokenizer_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("tokenizer.json", "vocab.txt"))
    except Exception:  # not a valid repo id
        return False


def check_vocabulary(tokenizer, vocab_size: int, model: str, advice: str) -> None:
    """ValueError when the tokenizer's ids run past the model's word embeddings (an IndexError on the first
    prompt with a high id, otherwise)."""
    size = len(tokenizer)
    if size > vocab_size:
        raise ValueError(f"the tokenizer has {size} tokens but {model} embeds {vocab_size}: ids from {vocab_size} "
                         f"on would index past its word embeddings; {advice}")
