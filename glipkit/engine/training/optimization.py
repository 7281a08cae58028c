"""GLIP's optimiser and learning-rate schedule: AdamW with a language-backbone LR, bias LR x2 without weight decay,
linear warmup then step or cosine decay (GLIP_SPEC.md §8.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass
class OptimizerSettings:
    """§8.6 defaults of the GLIP-T pretrain config."""

    lr: float = 1e-4  # SOLVER.BASE_LR
    lang_lr: float = 1e-5  # SOLVER.LANG_LR, for language_backbone.*
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0  # SOLVER.BIAS_LR_FACTOR
    betas: tuple[float, float] = (0.9, 0.999)


def parameter_groups(model: nn.Module, settings: OptimizerSettings) -> list[dict]:
    """One AdamW group per trainable parameter, with its LR and weight decay by name (§8.6).

    `language_backbone.*` takes `lang_lr`; any name containing "bias" (also bias_lang, bias0 and Swin's
    relative_position_bias_table, as the official substring rule does) gets LR x bias_lr_factor and no decay.
    """
    groups = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = settings.lang_lr if name.startswith("language_backbone.") else settings.lr
        weight_decay = settings.weight_decay
        if "bias" in name:
            lr *= settings.bias_lr_factor
            weight_decay = 0.0
        groups.append({"params": [parameter], "lr": lr, "weight_decay": weight_decay, "name": name})
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return groups


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`."""
    return torch.optim.AdamW(parameter_groups(model, settings), lr=settings.lr, betas=settings.betas,
                             weight_decay=settings.weight_decay)


@dataclass
class ScheduleSettings:
    """Warmup then decay. Step decay multiplies by `gamma` at each fraction of `total_steps` in `milestones`."""

    total_steps: int
    kind: str = "step"  # step | cosine | constant
    warmup_steps: int = 2000  # SOLVER.WARMUP_ITERS
    warmup_factor: float = 0.001  # SOLVER.WARMUP_FACTOR
    milestones: Sequence[float] = (0.67, 0.89)  # SOLVER.STEPS as fractions of training
    gamma: float = 0.1
    min_factor: float = 0.0  # cosine floor, as a fraction of the base LR


def lr_factor(step: int, settings: ScheduleSettings) -> float:
    """The multiplier of every group's base LR at optimiser step `step` (0-based)."""
    if settings.kind not in ("step", "cosine", "constant"):
        raise ValueError(f"schedule must be step, cosine or constant, not {settings.kind!r}")
    factor = 1.0
    if settings.kind == "step":
        boundaries = [int(round(m * settings.total_steps)) if m < 1 else int(m) for m in settings.milestones]
        factor = settings.gamma ** sum(1 for b in boundaries if step >= b)
    elif settings.kind == "cosine":
        span = max(1, settings.total_steps - settings.warmup_steps)
        progress = min(1.0, max(0.0, (step - settings.warmup_steps) / span))
        factor = settings.min_factor + (1 - settings.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < settings.warmup_steps:
        # Linear warmup from warmup_factor to 1, multiplying the decay (WarmupMultiStepLR's "linear" method).
        alpha = step / settings.warmup_steps
        factor *= settings.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, settings: ScheduleSettings):
    """A LambdaLR applying `lr_factor` (its state_dict resumes it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
