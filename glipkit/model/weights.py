"""Checkpoints: official GLIP keys <-> glipkit names, reading .pth/.safetensors, strict loading (GLIP_SPEC.md §10-11)."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from glipkit.files import atomic_path

GLIPKIT_FORMAT = "glipkit"

# Keys of official checkpoints that glipkit recomputes or does not use: tolerated and dropped when loading.
_DROPPED_KEY_PATTERNS = [
    re.compile(r"^backbone\.body\..*\.relative_position_index$"),  # recomputed by timm (§2.5)
    re.compile(r"^backbone\.body\..*\.attn_mask$"),
    re.compile(r"^rpn\.anchor_generator\.cell_anchors\.\d+$"),  # recomputed (§6.1)
    re.compile(r"^language_backbone\.body\.model\.embeddings\.position_ids$"),  # old transformers (§10)
    re.compile(r"^language_backbone\.body\.model\.pooler\."),  # BERT is built without a pooler (§4.1)
]

# (official regex, glipkit template) for everything outside the fusion tower, tried in order.
_RENAMES = [
    (r"^backbone\.body\.layers\.(\d+)\.downsample\.(.*)$", None),  # handled in code: stage index + 1
    (r"^backbone\.body\.norm([123])\.(.*)$", None),  # handled in code: out_norms.{k-1}
    (r"^backbone\.body\.(.*)$", r"backbone.swin.\1"),
    (r"^backbone\.fpn\.fpn_inner([234])\.(.*)$", None),
    (r"^backbone\.fpn\.fpn_layer([234])\.(.*)$", None),
    (r"^backbone\.fpn\.top_blocks\.(p6|p7)\.(.*)$", r"fpn.\1.\2"),
    (r"^language_backbone\.body\.model\.(.*)$", r"language_backbone.bert.\1"),
    (r"^rpn\.head\.dyhead_tower\.(\d+)\.(.*)$", None),  # handled in code: tower layer + part
    (r"^rpn\.head\.dot_product_projection_text\.(.*)$", r"head.token_projection.\1"),
    (r"^rpn\.head\.(bbox_pred|centerness|cls_logits|scales|log_scale|bias_lang|bias0)(.*)$", r"head.\1\2"),
    (r"^rpn\.tunable_linear\.weight$", r"prompt_tuning.weight"),
]
_RENAMES = [(re.compile(p), t) for p, t in _RENAMES]

# Sub-module names inside one DyConv block of the tower.
_DYCONV_RENAMES = [
    (re.compile(r"^DyConv\.(\d)\.conv\.(.*)$"), r"convs.\1.conv.\2"),
    (re.compile(r"^DyConv\.(\d)\.bn\.(.*)$"), r"convs.\1.norm.\2"),
    (re.compile(r"^offset\.(.*)$"), r"offset.\1"),
    (re.compile(r"^AttnConv\.1\.(.*)$"), r"scale_attention.conv.\1"),
    (re.compile(r"^relu\.fc\.(\d)\.(.*)$"), r"dyrelu.fc.\1.\2"),
]


def is_dropped_official_key(key: str) -> bool:
    """True for official keys glipkit tolerates and ignores (buffers it recomputes, the unused BERT pooler)."""
    return any(p.match(key) for p in _DROPPED_KEY_PATTERNS)


def official_to_glipkit_key(key: str, early_fusion: bool = True) -> str:
    """The glipkit parameter name of an official key (without `module.`); raises KeyError if it has none.

    The official fusion tower is one flat Sequential: with early fusion, module 3i is X-MHA, 3i+1 the BERT
    layer and 3i+2 the DyConv of layer i; without it (GLIP-T(A)), module i is the DyConv of layer i (§5.1).
    """
    for pattern, template in _RENAMES:
        match = pattern.match(key)
        if not match:
            continue
        if template is not None:
            return match.expand(template)
        if key.startswith("backbone.body.layers."):
            # timm puts PatchMerging at the start of the next stage (§2.5).
            return f"backbone.swin.layers.{int(match.group(1)) + 1}.downsample.{match.group(2)}"
        if key.startswith("backbone.body.norm"):
            return f"backbone.out_norms.{int(match.group(1)) - 1}.{match.group(2)}"
        if key.startswith("backbone.fpn.fpn_inner"):
            return f"fpn.lateral_convs.{int(match.group(1)) - 2}.{match.group(2)}"
        if key.startswith("backbone.fpn.fpn_layer"):
            return f"fpn.output_convs.{int(match.group(1)) - 2}.{match.group(2)}"
        if key.startswith("rpn.head.dyhead_tower."):
            return _tower_key(int(match.group(1)), match.group(2), early_fusion, key)
    raise KeyError(f"official key '{key}' has no glipkit equivalent")


def _tower_key(module_index: int, rest: str, early_fusion: bool, key: str) -> str:
    if early_fusion:
        layer, part = divmod(module_index, 3)
    else:
        layer, part = module_index, 2
    if part == 0:
        if not rest.startswith("b_attn."):
            raise KeyError(f"official key '{key}' has no glipkit equivalent")
        return f"head.tower.{layer}.fusion.{rest[len('b_attn.'):]}"
    if part == 1:
        return f"head.tower.{layer}.language_layer.{rest}"
    for pattern, template in _DYCONV_RENAMES:
        match = pattern.match(rest)
        if match:
            return f"head.tower.{layer}.dyconv.{match.expand(template)}"
    raise KeyError(f"official key '{key}' has no glipkit equivalent")



class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says which keys and why."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a `.pth` (official format, `weights_only=True`) or `.safetensors` file.

    For official files the weights are `checkpoint["model"]` when present, with any `module.` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
        return _strip_module_prefix(tensors), metadata
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors, and loading it could run "
            f"code (torch.load weights_only=True said: {str(error).splitlines()[0]})"
        ) from None
    except Exception as error:  # truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path} is not a state dict (nor a dict with a 'model' state dict)")
    return _strip_module_prefix(checkpoint), {}


def _strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # §10: DDP-saved checkpoints prefix every key with `module.`; strip it only when all keys have it.
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def is_official_state_dict(state: dict[str, Tensor]) -> bool:
    return any(k.startswith("backbone.body.") for k in state)


def infer_official_config(state: dict[str, Tensor]):
    """A GLIPConfig whose shapes fit an official state dict (Swin size, window, tower depth, fusion, BERT sizes)."""
    from glipkit.model.config import GLIPConfig, HeadConfig, LanguageConfig, SwinConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"not a GLIP checkpoint: key '{key}' is missing")
        return tuple(state[key].shape)

    embed_dim = shape("backbone.body.patch_embed.proj.weight")[0]
    depths, heads = [], []
    stage = 0
    while f"backbone.body.layers.{stage}.blocks.0.norm1.weight" in state:
        count = 0
        while f"backbone.body.layers.{stage}.blocks.{count}.norm1.weight" in state:
            count += 1
        depths.append(count)
        heads.append(shape(f"backbone.body.layers.{stage}.blocks.0.attn.relative_position_bias_table")[1])
        stage += 1
    table = shape("backbone.body.layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window = (int(round(table**0.5)) + 1) // 2
    tower = {int(k.split(".")[3]) for k in state if k.startswith("rpn.head.dyhead_tower.")}
    early_fusion = any(".b_attn." in k for k in state)
    num_layers = (max(tower) + 1) // 3 if early_fusion else max(tower) + 1
    channels = shape("backbone.fpn.fpn_layer2.weight")[0]
    prefix = "language_backbone.body.model."
    hidden = shape(prefix + "embeddings.word_embeddings.weight")
    bert_layers = len({k.split(".")[5] for k in state if k.startswith(prefix + "encoder.layer.")})
    lang = LanguageConfig(
        vocab_size=hidden[0],
        hidden_size=hidden[1],
        num_hidden_layers=bert_layers,
        intermediate_size=shape(prefix + "encoder.layer.0.intermediate.dense.weight")[0],
        max_position_embeddings=shape(prefix + "embeddings.position_embeddings.weight")[0],
        type_vocab_size=shape(prefix + "embeddings.token_type_embeddings.weight")[0],
        num_attention_heads=max(1, hidden[1] // 64),
    )
    head = HeadConfig(channels=channels, num_layers=num_layers, early_fusion=early_fusion,
                      use_fused_language=early_fusion)
    if early_fusion:
        head.fusion_embed_dim = shape("rpn.head.dyhead_tower.0.b_attn.attn.v_proj.weight")[0]
    if "rpn.head.cls_logits.weight" in state:
        head.num_classes = shape("rpn.head.cls_logits.weight")[0] + 1
    swin = SwinConfig(embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(heads), window_size=window,
                      drop_path_rate=0.4 if embed_dim >= 192 else 0.2)
    return GLIPConfig(swin=swin, language=lang, head=head)


def official_to_glipkit_state_dict(state: dict[str, Tensor], early_fusion: bool = True) -> dict[str, Tensor]:
    """Rename an official state dict to glipkit names, dropping the tolerated extras (§10-§11)."""
    renamed: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if is_dropped_official_key(key):
            continue
        try:
            renamed[official_to_glipkit_key(key, early_fusion)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint keys have no place in GLIP: {_key_list(unknown)}")
    return renamed


def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load glipkit-named tensors into `model`, failing loudly on any missing, unexpected or mis-shaped key.

    `head.cls_logits` is the exception (§6.2): unused for scoring, its width depends on the dataset the
    checkpoint was trained on; a missing or mis-sized one keeps its initialisation. Returns notes on what was
    tolerated.
    """
    own = model.state_dict()
    notes = []
    state = dict(state)
    for key in [k for k in state if k.startswith("head.cls_logits.")]:
        if key not in own or own[key].shape != state[key].shape:
            notes.append(f"{key}: checkpoint shape {tuple(state[key].shape)} ignored (unused for scoring)")
            del state[key]
    missing = [k for k in own if k not in state and not k.startswith("head.cls_logits.")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_key_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_key_list(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with another shape: {_key_list(mismatched)}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return notes


def _key_list(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def save_glipkit_checkpoint(model: nn.Module, config_json: str, path: str | os.PathLike,
                            extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights as `.safetensors` with its config in the metadata, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": GLIPKIT_FORMAT, "glipkit_config": config_json, **(extra_metadata or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def glipkit_config_from_metadata(metadata: dict[str, str]):
    from glipkit.model.config import GLIPConfig

    if "glipkit_config" not in metadata:
        return None
    return GLIPConfig.from_json(metadata["glipkit_config"])


def write_official_checkpoint(state: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Save official-named tensors the way the official trainer does: {"model": {"module." + key: tensor}}."""
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, str(path))


def glipkit_to_official_state_dict(state: dict[str, Tensor], official_keys: list[str],
                                   early_fusion: bool = True) -> dict[str, Tensor]:
    """Inverse of `official_to_glipkit_state_dict` for the given official key list (for export and tests)."""
    out = {}
    for key in official_keys:
        if is_dropped_official_key(key):
            continue
        out[key] = state[official_to_glipkit_key(key, early_fusion)]
    return out
