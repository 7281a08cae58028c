"""Checkpoints: official GLIP keys <-> glipkit names, reading .pth/.safetensors, strict loading (GLIP_SPEC.md §10-11)."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from glipkit.files import atomic_path, default_file_mode

GLIPKIT_FORMAT = "glipkit"

# Keys of official checkpoints that glipkit recomputes or does not use: tolerated and dropped when loading.
_DROPPED_KEY_PATTERNS = [
    re.compile(r"^backbone\.body\..*\.relative_position_index$"),  # recomputed by timm (§2.5)
    re.compile(r"^backbone\.body\..*\.attn_mask$"),
    re.compile(r"^rpn\.anchor_generator\.cell_anchors\.\d+$"),  # recomputed (§6.1)
    re.compile(r"^language_backbone\.body\.model\.embeddings\.position_ids$"),  # old transformers (§10)
    re.compile(r"^language_backbone\.body\.model\.pooler\."),  # BERT is built without a pooler (§4.1)
]

# (official prefix, glipkit prefix, index shift) for everything outside the fusion tower, tried in order in either
# direction; "{}" is a number that differs by the shift (timm puts PatchMerging at the start of the next stage, §2.5).
_PREFIXES = [
    ("backbone.body.layers.{}.downsample.", "backbone.swin.layers.{}.downsample.", 1),
    ("backbone.body.norm{}.", "backbone.out_norms.{}.", -1),
    ("backbone.body.", "backbone.swin.", 0),
    ("backbone.fpn.fpn_inner{}.", "fpn.lateral_convs.{}.", -2),
    ("backbone.fpn.fpn_layer{}.", "fpn.output_convs.{}.", -2),
    ("backbone.fpn.top_blocks.p6.", "fpn.p6.", 0),
    ("backbone.fpn.top_blocks.p7.", "fpn.p7.", 0),
    ("language_backbone.body.model.", "language_backbone.bert.", 0),
    ("rpn.head.dot_product_projection_text.", "head.token_projection.", 0),
    *((f"rpn.head.{name}", f"head.{name}", 0)
      for name in ("bbox_pred.", "centerness.", "cls_logits.", "scales.", "log_scale", "bias_lang", "bias0")),
    ("rpn.tunable_linear.weight", "prompt_tuning.weight", 0),
]
# The same for the sub-modules of one DyConv block of the tower.
_DYCONV_PREFIXES = [
    ("DyConv.{}.conv.", "convs.{}.conv.", 0),
    ("DyConv.{}.bn.", "convs.{}.norm.", 0),
    ("offset.", "offset.", 0),
    ("AttnConv.1.", "scale_attention.conv.", 0),
    ("relu.fc.{}.", "dyrelu.fc.{}.", 0),
]
_OFFICIAL_TOWER = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.(.*)$")
_GLIPKIT_TOWER = re.compile(r"^head\.tower\.(\d+)\.(fusion|language_layer|dyconv)\.(.*)$")


def _rename(key: str, table: list[tuple[str, str, int]], to_glipkit: bool) -> str | None:
    """`key` with the first matching prefix of `table` replaced (official -> glipkit or back), else None."""
    for official, glipkit, shift in table:
        source, target = (official, glipkit) if to_glipkit else (glipkit, official)
        head, numbered, tail = source.partition("{}")
        if not numbered:
            if key.startswith(source):
                return target + key[len(source):]
            continue
        match = re.match(re.escape(head) + r"(\d+)" + re.escape(tail), key)
        if match:
            return target.format(int(match.group(1)) + (shift if to_glipkit else -shift)) + key[match.end():]
    return None


def is_dropped_official_key(key: str) -> bool:
    """True for official keys glipkit tolerates and ignores (buffers it recomputes, the unused BERT pooler)."""
    return any(p.match(key) for p in _DROPPED_KEY_PATTERNS)


def official_to_glipkit_key(key: str, early_fusion: bool = True) -> str:
    """The glipkit parameter name of an official key (without `module.`); raises KeyError if it has none.

    The official fusion tower is one flat Sequential: with early fusion, module 3i is X-MHA, 3i+1 the BERT
    layer and 3i+2 the DyConv of layer i; without it (GLIP-T(A)), module i is the DyConv of layer i (§5.1).
    """
    tower = _OFFICIAL_TOWER.match(key)
    if tower is None:
        renamed = _rename(key, _PREFIXES, to_glipkit=True)
    else:
        layer, part = divmod(int(tower.group(1)), 3) if early_fusion else (int(tower.group(1)), 2)
        rest = tower.group(2)
        if part == 0:
            renamed = f"head.tower.{layer}.fusion.{rest[len('b_attn.'):]}" if rest.startswith("b_attn.") else None
        elif part == 1:
            renamed = f"head.tower.{layer}.language_layer.{rest}"
        else:
            dyconv = _rename(rest, _DYCONV_PREFIXES, to_glipkit=True)
            renamed = dyconv and f"head.tower.{layer}.dyconv.{dyconv}"
    if renamed is None:
        raise KeyError(f"official key '{key}' has no glipkit equivalent")
    return renamed


def glipkit_to_official_key(key: str, early_fusion: bool = True) -> str:
    """The official name of a glipkit parameter (without `module.`); raises KeyError if it has none."""
    tower = _GLIPKIT_TOWER.match(key)
    if tower is None:
        renamed = _rename(key, _PREFIXES, to_glipkit=False)
    else:
        layer, part, rest = int(tower.group(1)), tower.group(2), tower.group(3)
        if part == "fusion":
            renamed = f"rpn.head.dyhead_tower.{3 * layer}.b_attn.{rest}"
        elif part == "language_layer":
            renamed = f"rpn.head.dyhead_tower.{3 * layer + 1}.{rest}"
        else:
            dyconv = _rename(rest, _DYCONV_PREFIXES, to_glipkit=False)
            renamed = dyconv and f"rpn.head.dyhead_tower.{3 * layer + 2 if early_fusion else layer}.{dyconv}"
    if renamed is None:
        raise KeyError(f"glipkit key '{key}' has no official equivalent")
    return renamed


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says which keys and why."""


# Globals an official training checkpoint holds beside its tensors that are data, not code: numpy scalars and
# dtypes (`eval_result`, saved by numpy 1.x as numpy.core.*, by 2.x as numpy._core.*). torch.load keeps
# weights_only=True and allows exactly these; anything else is refused and named.
def _numpy_globals() -> list:
    try:
        import numpy
    except ImportError:
        return []
    multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
    dtypes = vars(getattr(numpy, "dtypes", object))  # numpy >= 1.25: one class per dtype, rebuilt by BUILD
    dtype_classes = [cls for name, cls in dtypes.items() if name.endswith("DType") and isinstance(cls, type)]
    return [(multiarray.scalar, "numpy.core.multiarray.scalar"), (multiarray.scalar, "numpy._core.multiarray.scalar"),
            (numpy.dtype, "numpy.dtype"), (numpy.dtype, "numpy.core.multiarray.dtype"),
            (numpy.dtype, "numpy._core.multiarray.dtype"), *dtype_classes]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a `.pth` (official format, `weights_only=True`) or `.safetensors` file.

    The format is told by the file's first bytes, not its suffix. For official files the weights are
    `checkpoint["model"]` when present, with a `module.` prefix on every key removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" if not path.exists() else
                              f"{path} is not a file (a checkpoint is one .pth or .safetensors file)")
    kind = _file_kind(path)
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path)
    elif kind == "torch":
        tensors, metadata = _read_torch(path), {}
    else:
        raise CheckpointError(f"{path} {kind}")
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return _strip_module_prefix(tensors, path), metadata


def _file_kind(path: Path) -> str:
    """'safetensors', 'torch', or what the file is instead ("is not a checkpoint: ...")."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(64)
    if size == 0:
        return "is not a checkpoint: the file is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        return f"is a truncated or damaged torch file: its zip archive has no end ({size:,} bytes; cut short?)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip archive, or a legacy pickle
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    text = head.decode("utf-8", "ignore")
    if b"\x00" not in head and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        if first.startswith("version https://git-lfs"):
            return "is not a checkpoint: it is a Git LFS pointer, not the file itself (fetch it with `git lfs pull`)"
        return f"is not a checkpoint: it is a text file ({first!r}...), neither a torch .pth nor a .safetensors file"
    if path.suffix.lower() == ".safetensors":
        return "is not a safetensors file (it does not start with a header length and a JSON header)"
    return "is not a checkpoint: neither a torch .pth (zip archive or pickle) nor a .safetensors file"


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except Exception as error:  # safetensors' SafetensorError: truncated or damaged
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is a truncated or damaged .safetensors file ({reason}, "
                              f"{path.stat().st_size:,} bytes)") from None


def _read_torch(path: Path) -> dict[str, Tensor]:
    from torch.serialization import safe_globals

    try:
        with safe_globals(_numpy_globals()):
            # mmap: of a training checkpoint (weights, EMA, optimizer moments) only the weights are ever read
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"refusing to load {path}: it holds pickled objects that could run code when "
                              f"loaded ({_unsafe_globals(path, error)}); only tensors, numbers, strings, plain "
                              "containers and numpy scalars are read") from None
    except Exception as error:  # truncated or damaged archives, foreign pickles
        reason = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is a truncated or damaged torch file ({reason}, "
                              f"{path.stat().st_size:,} bytes)") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path} is not a state dict (nor a dict with a 'model' state dict)")
    return checkpoint


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _unsafe_globals(path: Path, error: Exception) -> str:
    """The globals that weights_only refused, listed without loading anything."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # a legacy (non-zip) file: torch names the first refused global in its message
        match = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
        names = [match.group(1)] if match else []
    allowed = {name for _, name in (g for g in _numpy_globals() if isinstance(g, tuple))}
    names = [n for n in names if n not in allowed]
    if names:
        return "globals " + ", ".join(names)
    # torch's own reason, without its advice to turn the check off
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    return match.group(1).strip()[:200] if match else type(error).__name__


def _strip_module_prefix(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    # §10: DDP-saved checkpoints prefix every key with `module.`; the official loader strips it only when all
    # keys have it. Some keys with it and some without cannot be one model's state dict.
    prefixed = [k for k in state if k.startswith("module.")]
    if prefixed and len(prefixed) < len(state):
        other = next(k for k in state if not k.startswith("module."))
        raise CheckpointError(f"{path} mixes key prefixes: {len(prefixed)} of {len(state)} keys start with "
                              f"'module.' (e.g. '{prefixed[0]}') and the rest do not (e.g. '{other}')")
    if prefixed:
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


def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor],
                            name: Callable[[str], str] | None = None) -> list[str]:
    """Load glipkit-named tensors into `model`, failing loudly on any missing, unexpected or mis-shaped key.

    `head.cls_logits` is the exception (§6.2): unused for scoring, its width depends on the dataset the
    checkpoint was trained on; a missing or mis-sized one keeps its initialisation. `name` turns a glipkit key
    into the one the message shows (the official name, for official files). Returns notes on what was tolerated.
    """
    name = name or (lambda key: key)
    own = model.state_dict()
    notes = []
    state = dict(state)
    for key in [k for k in state if k.startswith("head.cls_logits.")]:
        if key not in own or own[key].shape != state[key].shape:
            notes.append(f"{name(key)}: checkpoint shape {tuple(state[key].shape)} ignored (unused for scoring)")
            del state[key]
    missing = [name(k) for k in own if k not in state and not k.startswith("head.cls_logits.")]
    unexpected = [name(k) for k in state if k not in own]
    mismatched = [f"{name(k)} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_key_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_key_list(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with another shape: {_key_list(mismatched)}")
    if problems:
        raise CheckpointError("does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return notes


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no random initialisation: most of
    the time of building GLIP-T/L), while buffers such as Swin's relative_position_index are computed for real.
    `materialize_parameters` then gives them memory for a checkpoint to fill. Not thread-safe: it patches
    `nn.Module.register_parameter` while the context lasts."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def materialize_parameters(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Give meta parameters CPU memory (same shape, dtype and layout); those that `state` will not fill (absent, or
    of another shape) get their module's default initialisation rather than whatever the memory held."""
    for module_name, module in model.named_modules():
        unfilled = []
        for name, param in module._parameters.items():
            if param is not None and param.is_meta:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device="cpu"),
                                                        requires_grad=param.requires_grad)
                key = f"{module_name}.{name}" if module_name else name
                if key not in state or state[key].shape != param.shape:
                    unfilled.append(name)
        if unfilled and hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif unfilled:
            for name in unfilled:
                module._parameters[name].data.zero_()


def official_key_namer(early_fusion: bool) -> Callable[[str], str]:
    """glipkit key -> its official name (the key itself where there is none), for messages about official files."""
    def name(key: str) -> str:
        try:
            return glipkit_to_official_key(key, early_fusion)
        except KeyError:
            return key
    return name


_CELL_ANCHORS = re.compile(r"^rpn\.anchor_generator\.cell_anchors\.(\d+)$")


def check_recomputed_buffers(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Refuse an official state dict whose buffers that glipkit recomputes instead of loading (Swin's
    `relative_position_index`, the `cell_anchors`) differ from the ones `model` computed (§2.5, §6.1)."""
    from glipkit.model.boxes import cell_anchor

    buffers = dict(model.named_buffers())
    head = model.config.head
    for key, value in state.items():
        if key.endswith(".relative_position_index") and key.startswith("backbone.body."):
            ours = buffers.get(official_to_glipkit_key(key))
            what = "the index glipkit computes for this Swin window"
        elif match := _CELL_ANCHORS.match(key):
            level = int(match.group(1))
            if level >= len(head.anchor_strides):
                raise CheckpointError(f"{key}: the model has only {len(head.anchor_strides)} anchor levels; the "
                                      "file was made for another anchor layout")
            ours = cell_anchor(head.anchor_strides[level], head.anchor_sizes[level]).view(1, 4)
            what = f"glipkit's anchor for stride {head.anchor_strides[level]}, size {head.anchor_sizes[level]}"
        else:
            continue
        same = ours is not None and value.shape == ours.shape and torch.allclose(
            value.double().cpu(), ours.double().cpu(), atol=1e-3)
        if not same:
            shown = value.flatten()[:4].tolist()
            raise CheckpointError(f"{key} ({tuple(value.shape)}, starting {shown}) differs from {what} "
                                  f"({None if ours is None else tuple(ours.shape)}, starting "
                                  f"{None if ours is None else ours.flatten()[:4].tolist()}): the file was made "
                                  "with another layout, and loading it would give wrong boxes")


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
    with atomic_path(path, mode=default_file_mode()) as tmp:
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
