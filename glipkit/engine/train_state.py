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
import uuid
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def write_checkpoint(out_dir: str | os.PathLike, step: int, model, state: dict[str, Any],
                     ema_state: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None,
                     keep: int = 0) -> Path:
    """Write checkpoint `step` (model weights, optional EMA weights, state) and point `latest` at it.

    `keep` > 0 removes older checkpoints beyond the newest `keep`. Returns the checkpoint directory.
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp / MODEL_FILE, metadata)
        if ema_state is not None:
            from safetensors.torch import save_file

            from glipkit.model.weights import GLIPKIT_FORMAT

            save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, str(tmp / EMA_FILE),
                      metadata={"format": GLIPKIT_FORMAT, "glipkit_config": model.config.to_json(),
                                **(metadata or {})})
        torch.save(state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = root / f".{LATEST_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    os.replace(pointer, root / LATEST_FILE)
    if keep > 0:
        finished = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for old in finished[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


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
    from safetensors.torch import load_file

    return load_file(str(path))
