"""Building a GLIP for a command: a named model, an official `.pth`, a glipkit checkpoint, or a preset."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_glip(model: str | os.PathLike, tokenizer: str | None = None, device: str = "auto"):
    """A GLIP in eval mode on `device` from a named model (glip-t, ...), a checkpoint path, or `preset:NAME`
    (random weights, for tests and smoke runs)."""
    from glipkit.model.config import preset
    from glipkit.model.glip import GLIP
    from glipkit.model.hub import load_tokenizer

    name = str(model)
    if name.startswith("preset:"):
        torch.manual_seed(0)
        glip = GLIP(preset(name.split(":", 1)[1]), tokenizer=load_tokenizer(tokenizer)).eval()
    else:
        glip = GLIP.from_pretrained(name, tokenizer=tokenizer)
    return glip.to(resolve_device(device))
