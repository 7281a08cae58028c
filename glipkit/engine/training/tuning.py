"""What a fine-tuning mode trains: full, GLIP's prompt tuning, linear probing (GLIP_SPEC.md §9)."""

from __future__ import annotations

from torch import nn

TUNING_MODES = ("full", "prompt", "linear")

# §9 linear_prob: inside the head only these names stay trainable (official names in brackets):
# bbox_pred, centerness, token_projection [dot_product_projection_text], log_scale, bias_lang, bias0.
# cls_logits is frozen again by the dot-product rule and scales.* are frozen; cosine_scale does not exist here.
LINEAR_PROBE_PREFIXES = (
    "head.bbox_pred.",
    "head.centerness.",
    "head.token_projection.",
    "head.log_scale",
    "head.bias_lang",
    "head.bias0",
)


def apply_tuning(model: nn.Module, mode: str) -> list[str]:
    """Set requires_grad for `mode` and return the names of the trainable parameters.

    full: everything except `head.cls_logits` (unused: §8.5 weights its loss by 0, so its gradient is 0).
    prompt: only `prompt_tuning.weight` (added, zero-initialised, by `enable_prompt_tuning`).
    linear: the head's prediction layers listed in LINEAR_PROBE_PREFIXES.
    Frozen modules of the prompt and linear modes are kept in eval mode by `set_train_mode`.
    """
    if mode not in TUNING_MODES:
        raise ValueError(f"--tune must be one of {', '.join(TUNING_MODES)}, not {mode!r}")
    if mode == "prompt":
        model.enable_prompt_tuning()
    for name, parameter in model.named_parameters():
        if mode == "full":
            trainable = not name.startswith("head.cls_logits.")
        elif mode == "prompt":
            trainable = name == "prompt_tuning.weight"
        else:
            trainable = name.startswith(LINEAR_PROBE_PREFIXES)
        parameter.requires_grad_(trainable)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, mode: str) -> None:
    """model.train(), then eval() for what the mode freezes, as the official `train()` overrides do (§9).

    prompt: backbone, FPN, language backbone and the whole head in eval mode (RPN.FREEZE calls head.eval(), so
    dropouts are off). linear: backbone, FPN and language backbone in eval mode; the head stays in train mode.
    """
    model.train()
    if mode in ("prompt", "linear"):
        for module in (model.backbone, model.fpn, model.language_backbone):
            module.eval()
    if mode == "prompt":
        model.head.eval()


def enable_fusion_checkpointing(model: nn.Module) -> None:
    """Recompute the X-MHA fusion in the backward pass (cfg.head.use_checkpoint; memory only, same numbers)."""
    for layer in model.head.tower:
        layer.use_checkpoint = True
