"""Dataclass configs for GLIP and its presets (GLIP_SPEC.md §0, §2.1, §4.1, §5, §6.1, §7.1)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class SwinConfig:
    """Swin Transformer v1 image backbone (GLIP_SPEC.md §2.1)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of each stage output: embed_dim * 2**i."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass
class LanguageConfig:
    """BERT text encoder; the in-head BERT layers of the fusion tower use the same sizes (§4.1, §5.3)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_query_len: int = 256
    tokenizer: str = "bert-base-uncased"


@dataclass
class HeadConfig:
    """FPN width, the language-aware deep-fusion tower and the prediction head (§3, §5, §6)."""

    channels: int = 256
    num_layers: int = 6
    early_fusion: bool = True
    # §5.5: the alignment head reads the fused language features (True) or BERT's masked output (GLIP-T(A)).
    use_fused_language: bool = True
    fusion_embed_dim: int = 2048
    fusion_num_heads: int = 8
    fusion_dropout: float = 0.1
    group_norm_groups: int = 16
    log_scale_init: float = 0.0
    prior_prob: float = 0.01
    # §6.2: `cls_logits` (num_classes - 1 channels) is in every official checkpoint but unused for scoring.
    num_classes: int = 81
    anchor_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    anchor_strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    fpn_drop_block: bool = True
    use_checkpoint: bool = False


@dataclass
class PostprocessConfig:
    """ATSS post-processing at test time (§7.1)."""

    score_threshold: float = 0.05
    pre_nms_top_n: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 100


@dataclass
class InputConfig:
    """Image preprocessing (§1.1): resize, BGR*255 normalisation, padding."""

    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)  # BGR
    pixel_std: tuple[float, float, float] = (57.375, 57.120, 58.395)  # BGR
    train_min_sizes: tuple[int, ...] = (480, 560, 640, 720, 800)


@dataclass
class SpeedConfig:
    """Execution levers: same parameters and function, other kernels (tolerances in tests/test_speed_levers.py).

    All off by default; the official code's numbers are the defaults' (tests/test_official_parity.py).
    """

    bert_attention: str = "eager"  # "sdpa": transformers' scaled_dot_product_attention for the BERT backbone
    swin_sdpa: bool = False  # Swin window attention through scaled_dot_product_attention (timm's fused path)
    # X-MHA and the in-head BERT attention through scaled_dot_product_attention whenever the official ±50000 score
    # clamp provably cannot bite (|q||k| bound, checked per call); the exact path otherwise (§5.2, §5.3).
    fusion_sdpa: bool = False
    channels_last: bool = False  # FPN and head convolutions in channels-last memory format
    compile_fusion: str | None = None  # a torch.compile backend ("inductor") for each fusion tower layer


@dataclass
class GLIPConfig:
    """A whole GLIP model: backbone, text encoder, fusion head, post-processing, preprocessing, speed levers."""

    swin: SwinConfig = field(default_factory=SwinConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    input: InputConfig = field(default_factory=InputConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GLIPConfig":
        """Rebuild a config from `to_dict` output (lists become tuples, unknown keys are an error)."""
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            sub_values = dict(values.get(f.name, {}))
            known = {sf.name for sf in dataclasses.fields(sub_cls)}
            unknown = set(sub_values) - known
            if unknown:
                raise ValueError(f"unknown GLIP config keys in '{f.name}': {sorted(unknown)}")
            sub_values = {k: tuple(v) if isinstance(v, list) else v for k, v in sub_values.items()}
            parts[f.name] = sub_cls(**sub_values)
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> "GLIPConfig":
        return cls.from_dict(json.loads(text))


def glip_t() -> GLIPConfig:
    """GLIP-T (B, C and the released O365+GoldG+CC+SBU model share this architecture)."""
    return GLIPConfig()


def glip_t_a() -> GLIPConfig:
    """GLIP-T (A): same backbone and BERT, a DyConv-only head without deep fusion (§0, §5.5)."""
    return GLIPConfig(head=HeadConfig(early_fusion=False, use_fused_language=False))


def glip_l() -> GLIPConfig:
    """GLIP-L: Swin-L with window 12 and an 8-layer fusion tower (§0, §2.1)."""
    return GLIPConfig(
        swin=SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                        drop_path_rate=0.4),
        head=HeadConfig(num_layers=8),
    )


def glip_tiny_test() -> GLIPConfig:
    """A very small GLIP with every code path of the real one, for unit tests (seconds on a CPU)."""
    return GLIPConfig(
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=7,
                        drop_path_rate=0.0),
        language=LanguageConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        head=HeadConfig(channels=32, num_layers=1, fusion_embed_dim=64, fusion_num_heads=2, fusion_dropout=0.0),
        input=InputConfig(min_size=128, max_size=224, train_min_sizes=(96, 112, 128)),
    )


def glip_small() -> GLIPConfig:
    """A small GLIP that trains from scratch on a CPU in minutes (synthetic data, examples/)."""
    return GLIPConfig(
        swin=SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 8), window_size=7,
                        drop_path_rate=0.1),
        language=LanguageConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256),
        head=HeadConfig(channels=64, num_layers=2, fusion_embed_dim=256, fusion_num_heads=4),
        input=InputConfig(min_size=256, max_size=416, train_min_sizes=(192, 224, 256)),
    )


PRESETS = {
    "glip-t": glip_t,
    "glip-t-c": glip_t,
    "glip-t-a": glip_t_a,
    "glip-l": glip_l,
    "glip-small": glip_small,
    "glip-tiny-test": glip_tiny_test,
}


def preset(name: str) -> GLIPConfig:
    """The config of a named preset (see PRESETS)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown GLIP preset '{name}'; known: {', '.join(sorted(PRESETS))}") from None


def from_official_config(values: Mapping[str, Any]) -> GLIPConfig:
    """Build a config from official yacs keys (`MODEL.SWINT.*`, `MODEL.DYHEAD.*`, `BERT_CONFIG.*`, ...).

    Keys not given keep the values of the GLIP-T pretrain config; `_`-prefixed keys are ignored. Values under
    `_effective_values` are applied first, so explicit keys win.
    """
    flat: dict[str, Any] = dict(values.get("_effective_values", {}))
    flat.update({k: v for k, v in values.items() if not k.startswith("_")})
    cfg = glip_t()
    if "MODEL.SWINT.DEPTHS" in flat and len(flat["MODEL.SWINT.DEPTHS"]) == 4 and flat.get("MODEL.SWINT.EMBED_DIM") == 192:
        cfg = glip_l()
    handled: set[str] = set()

    def take(key: str, target: Any, attr: str, convert=lambda v: v) -> None:
        if key in flat:
            setattr(target, attr, convert(flat[key]))
            handled.add(key)

    take("MODEL.SWINT.EMBED_DIM", cfg.swin, "embed_dim", int)
    take("MODEL.SWINT.DEPTHS", cfg.swin, "depths", tuple)
    take("MODEL.SWINT.NUM_HEADS", cfg.swin, "num_heads", tuple)
    take("MODEL.SWINT.WINDOW_SIZE", cfg.swin, "window_size", int)
    take("MODEL.SWINT.MLP_RATIO", cfg.swin, "mlp_ratio", float)
    take("MODEL.SWINT.DROP_PATH_RATE", cfg.swin, "drop_path_rate", float)
    take("MODEL.BACKBONE.OUT_CHANNELS", cfg.head, "channels", int)
    take("MODEL.DYHEAD.NUM_CONVS", cfg.head, "num_layers", int)
    take("MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON", cfg.head, "early_fusion", bool)
    take("MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT", cfg.head, "use_fused_language", bool)
    take("MODEL.DYHEAD.LOG_SCALE", cfg.head, "log_scale_init", float)
    take("MODEL.DYHEAD.PRIOR_PROB", cfg.head, "prior_prob", float)
    take("MODEL.DYHEAD.NUM_CLASSES", cfg.head, "num_classes", int)
    take("MODEL.GROUP_NORM.NUM_GROUPS", cfg.head, "group_norm_groups", int)
    take("MODEL.RPN.ANCHOR_SIZES", cfg.head, "anchor_sizes", tuple)
    take("MODEL.RPN.ANCHOR_STRIDE", cfg.head, "anchor_strides", tuple)
    take("MODEL.FPN.DROP_BLOCK", cfg.head, "fpn_drop_block", bool)
    take("MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN", cfg.language, "max_query_len", int)
    take("MODEL.ATSS.INFERENCE_TH", cfg.postprocess, "score_threshold", float)
    take("MODEL.ATSS.PRE_NMS_TOP_N", cfg.postprocess, "pre_nms_top_n", int)
    take("MODEL.ATSS.NMS_TH", cfg.postprocess, "nms_threshold", float)
    take("MODEL.ATSS.DETECTIONS_PER_IMG", cfg.postprocess, "detections_per_image", int)
    take("INPUT.MIN_SIZE_TEST", cfg.input, "min_size", int)
    take("INPUT.MAX_SIZE_TEST", cfg.input, "max_size", int)
    take("INPUT.PIXEL_MEAN", cfg.input, "pixel_mean", tuple)
    take("INPUT.PIXEL_STD", cfg.input, "pixel_std", tuple)
    take("DATALOADER.SIZE_DIVISIBILITY", cfg.input, "size_divisibility", int)
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act",
                 "hidden_dropout_prob", "attention_probs_dropout_prob"):
        take(f"BERT_CONFIG.{name}", cfg.language, name)

    # Consistency rules of the official code that a config file cannot break without breaking the model.
    stage_out = flat.get("MODEL.SWINT.OUT_CHANNELS")
    if stage_out is not None and tuple(stage_out) != cfg.swin.stage_channels:
        raise ValueError(f"MODEL.SWINT.OUT_CHANNELS {stage_out} != embed_dim*2**i {cfg.swin.stage_channels}")
    for key in ("MODEL.DYHEAD.CHANNELS", "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE"):
        if key in flat and int(flat[key]) != cfg.head.channels:
            raise ValueError(f"{key}={flat[key]} must equal MODEL.BACKBONE.OUT_CHANNELS={cfg.head.channels}")
    lang_dim = flat.get("MODEL.LANGUAGE_BACKBONE.LANG_DIM")
    if lang_dim is not None and int(lang_dim) != cfg.language.hidden_size:
        raise ValueError(f"MODEL.LANGUAGE_BACKBONE.LANG_DIM={lang_dim} must equal BERT hidden_size "
                         f"{cfg.language.hidden_size}")
    return cfg
