"""Training checkpoints on disk: weights as `.safetensors`, the resumable state as a torch file, written atomically.

    <out>/checkpoints/step-0000100/model.safetensors   the weights (GLIP.save_pretrained, loadable anywhere)
                                  ema.safetensors     the EMA weights, when EMA is on
                                  state.pt            optimizer, scheduler, grad scaler, step, RNG, data position
    <out>/checkpoints/latest                         name of the newest complete checkpoint

A checkpoint directory is filled under a hidden temporary name and renamed when complete, then `latest` is
replaced; an interrupted write leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from glipkit.files import atomic_path, write_text_atomic

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"


def checkpoint_name(step: int) -> str:
    """`step-0000100`: names sort by step."""
    return f"step-{step:07d}"


def write_checkpoint(out_dir: str | os.PathLike, step: int, model, state: dict[str, Any],
                     ema_state: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None,
                     keep: int = 0) -> Path:
    """Write checkpoint `step` (model weights, optional EMA weights, state) and point `latest` at it.

    `keep` > 0 removes older checkpoints beyond the newest `keep`. Returns the checkpoint directory.
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp / MODEL_FILE, metadata)
        if ema_state is not None:
            from safetensors.torch import save_file

            from glipkit.model.weights import GLIPKIT_FORMAT

            save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, str(tmp / EMA_FILE),
                      metadata={"format": GLIPKIT_FORMAT, "glipkit_config": model.config.to_json(),
                                **(metadata or {})})
        torch.save(state, tmp / STATE_FILE)
        if final.exists():  # a rename cannot replace a directory that has files
            shutil.rmtree(final)
    write_text_atomic(root / LATEST_FILE, final.name + "\n")
    if keep > 0:
        finished = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for old in finished[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / STATE_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    finished = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file())
    return finished[-1] if finished else None


def resolve_resume(resume: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """`--resume` target: a checkpoint directory, a run directory (its latest checkpoint), or "auto" (the run's
    own `out_dir`). FileNotFoundError naming what is missing."""
    if str(resume) == "auto":
        found = latest_checkpoint(out_dir)
        if found is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {Path(out_dir) / CHECKPOINTS_DIR}")
        return found
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"--resume: {path} is neither a checkpoint nor a run directory with checkpoints")
    return found


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The resumable state of a checkpoint (loaded with weights_only=True)."""
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (on the CPU)."""
    from safetensors.torch import load_file

    return load_file(str(path))
