"""Where and how a command runs its GLIP: device, precision, TF32, worker counts, and building the model.

Every command (predict, eval, pseudo-label, train-student) goes through these functions, so that `--device`,
`--precision auto` and `--model` mean the same everywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the CLI reads these constants without paying for it.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PRESET_PREFIX = "preset:"
PRESET_SEED = 0  # random weights of `preset:NAME` models: the same model in every process and command

# What may change on a model that already has weights: nothing that changes a parameter's shape.
RUNTIME_OPTIONS = ("input.", "postprocess.", "head.use_checkpoint", "head.fpn_drop_block", "speed.")


# ---------------------------------------------------------------------------------------------------- device


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def check_device(device: str | torch.device) -> None:
    """GlipkitUsageError unless `--device` names a device this machine has (auto, cpu, cuda, cuda:N, ...).

    The spelling is checked without importing torch; a GPU device imports it to ask whether the GPU exists."""
    from glipkit.errors import GlipkitUsageError

    name = str(device)
    if not DEVICE_PATTERN.fullmatch(name):
        raise GlipkitUsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "xpu"):
        return
    import torch

    backend = getattr(torch, kind)
    count = backend.device_count() if backend.is_available() else 0
    if count == 0:
        raise GlipkitUsageError(f"--device {name}: no {kind.upper()} device is visible to torch "
                                f"(torch.{kind}.is_available() is False); use --device cpu or auto")
    if index and int(index) >= count:
        raise GlipkitUsageError(f"--device {name}: this machine has {count} {kind.upper()} device(s), "
                                f"numbered 0-{count - 1}")


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> this process's GPU when CUDA is available, else cpu; a bare `cuda` takes the local rank's GPU
    (torchrun's LOCAL_RANK), which also becomes the current CUDA device. A device this machine lacks is a
    GlipkitUsageError (check_device)."""
    import torch

    if not isinstance(device, torch.device):
        check_device(device)
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(name)
    if target.type == "cuda":
        if target.index is None:
            target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    return target


def set_tf32(allowed: bool) -> None:
    """Allow or forbid TF32 in CUDA matmuls and cuDNN convolutions (process-wide switches; no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------- precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on CUDA, fp32 elsewhere (bf16 on CPU is slower than fp32 on most CPUs); checks the rest."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is not supported on the CPU; use --precision bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """An autocast context for a resolved `precision` on `device` (fp32: no autocast)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be fp32, bf16 or fp16, not '{precision}'")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


# ----------------------------------------------------------------------------------------------------- model


@dataclass
class ModelSource:
    """What `--model` named: a preset with random weights, a named official model, or a checkpoint file."""

    spec: str
    preset: str | None = None  # preset name for random weights
    path: Path | None = None  # checkpoint file (downloaded for named models)


def model_source(spec: str | os.PathLike) -> ModelSource:
    """Classify `--model`: `preset:NAME` (or a preset name that is no official model) is random weights."""
    from glipkit.model.config import PRESETS
    from glipkit.model.hub import NAMED_MODELS

    name = str(spec)
    if name.startswith(PRESET_PREFIX):
        return ModelSource(name, preset=name[len(PRESET_PREFIX):])
    if name in PRESETS and name not in NAMED_MODELS:
        return ModelSource(name, preset=name)
    return ModelSource(name)


def _parse_option(value: Any) -> Any:
    import json

    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def apply_config_options(config, options: Mapping[str, Any]) -> None:
    """Set `section.field` values of a GLIPConfig (lists become tuples); ValueError on unknown names."""
    for name, raw in options.items():
        section_name, _, field_name = name.partition(".")
        section = getattr(config, section_name, None)
        if section is None or not field_name or not hasattr(section, field_name):
            raise ValueError(f"unknown model option {name!r} (use SECTION.FIELD, e.g. input.train_min_sizes)")
        value = _parse_option(raw)
        setattr(section, field_name, tuple(value) if isinstance(value, list) else value)


def load_model(spec: str | os.PathLike, tokenizer=None, device: str | torch.device = "cpu",
               options: Mapping[str, Any] | None = None, seed: int = PRESET_SEED):
    """A GLIP (eval mode, on `device`) from `--model`: a named official model (glip-t, ...), a checkpoint path
    (.pth / .safetensors), or `preset:NAME` (random weights drawn with `seed`). `tokenizer` is a directory, an
    object, or None for bert-base-uncased; `options` are `section.field` config overrides (presets take any,
    pretrained models only those that change no parameter shape)."""
    import torch

    from glipkit.model.config import preset
    from glipkit.model.glip import GLIP
    from glipkit.model.hub import check_vocabulary, load_tokenizer

    options = dict(options or {})
    source = model_source(spec)
    if source.preset is not None:
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(None if tokenizer is None else str(tokenizer))
        config = preset(source.preset)
        apply_config_options(config, options)
        check_vocabulary(tokenizer, config.language.vocab_size, f"preset {source.preset}",
                         f"set --model-option language.vocab_size={len(tokenizer)}")
        torch.manual_seed(seed)
        model = GLIP(config, tokenizer)
    else:
        frozen = [k for k in options if not k.startswith(RUNTIME_OPTIONS)]
        if frozen:
            raise ValueError(f"model options {frozen} would change the shape of a pretrained model")
        model = GLIP.from_pretrained(source.spec, tokenizer=tokenizer)  # the tokenizer first, then the weights
        apply_config_options(model.config, options)
        if "head.fpn_drop_block" in options:
            from glipkit.model.fpn import DropBlock2D

            model.fpn.drop_block = DropBlock2D(0.3, 3) if model.config.head.fpn_drop_block else None
        model.set_speed(model.config.speed)
    return model.eval().to(device)


def model_info(spec: str | os.PathLike, tokenizer: str | None = None) -> dict[str, Any]:
    """What produced a table, for its metadata: the model spec, its file, size and SHA-256 (or `random`)."""
    from glipkit.files import file_sha256
    from glipkit.model.hub import resolve_model_file

    source = model_source(spec)
    info: dict[str, Any] = {"model": source.spec, "tokenizer": tokenizer or "bert-base-uncased"}
    if source.preset is not None:
        info["weights"] = f"random (torch.manual_seed({PRESET_SEED}))"
    else:
        path = resolve_model_file(source.spec)
        info.update(model_file=str(path), model_bytes=os.path.getsize(path), model_sha256=file_sha256(path))
    return info
