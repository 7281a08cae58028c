"""Exponential moving average of a model's weights (GLIP-T pretraining uses decay 0.999, GLIP_SPEC.md §8.6)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class WeightEma:
    """EMA of every floating-point entry of a model's state dict, kept in fp32 on the model's device."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            name: value.detach().float().clone()
            for name, value in model.state_dict().items()
            if value.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * current."""
        for name, value in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(value.detach().float(), alpha=1 - self.decay)

    def state_dict_for(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with the averaged values (cast to each entry's dtype)."""
        state = model.state_dict()
        return {name: (self.shadow[name].to(value.dtype) if name in self.shadow else value)
                for name, value in state.items()}

    def load_shadow(self, shadow: dict[str, Tensor]) -> None:
        """Restore the averages (e.g. from a checkpoint); names must match."""
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise ValueError(f"EMA state lacks {missing[:5]}")
        for name in self.shadow:
            self.shadow[name].copy_(shadow[name])

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of `model` holding the averaged weights (a GLIP's tokenizer is shared, not copied)."""
        tokenizer = getattr(model, "tokenizer", None)
        model.tokenizer = None
        try:
            averaged = copy.deepcopy(model)
        finally:
            model.tokenizer = tokenizer
        averaged.tokenizer = tokenizer
        averaged.load_state_dict(self.state_dict_for(model))
        return averaged
