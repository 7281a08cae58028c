"""Weight-space ensembling: the average of two checkpoints of one architecture (OWL-ST, WiSE-FT)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from glipkit.files import atomic_path, default_file_mode
from glipkit.model.weights import CheckpointError, read_checkpoint


def average_checkpoints(first: str | os.PathLike, second: str | os.PathLike, out: str | os.PathLike,
                        alpha: float = 0.5) -> Path:
    """Write alpha * first + (1 - alpha) * second as `.safetensors` with `first`'s metadata (its config);
    non-float tensors (counters) are `first`'s. CheckpointError when the two differ in keys or shapes."""
    from safetensors.torch import save_file

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    a, metadata = read_checkpoint(first)
    b, _ = read_checkpoint(second)
    if a.keys() != b.keys():
        differ = sorted(a.keys() ^ b.keys())
        raise CheckpointError(f"{first} and {second} hold different tensors ({len(differ)} keys, e.g. {differ[0]})")
    averaged = {}
    for key, x in a.items():
        y = b[key]
        if x.shape != y.shape:
            raise CheckpointError(f"{key}: shape {tuple(x.shape)} in {first}, {tuple(y.shape)} in {second}")
        if x.is_floating_point():
            x = (alpha * x.double() + (1 - alpha) * y.double()).to(x.dtype)
        averaged[key] = x.contiguous()
    metadata = {**metadata, "averaged": json.dumps({"first": str(first), "second": str(second), "alpha": alpha})}
    path = Path(out)
    with atomic_path(path, mode=default_file_mode()) as tmp:
        save_file(averaged, str(tmp), metadata=metadata)
    return path
