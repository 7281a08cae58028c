"""The BERT language backbone and the features it hands to the fusion head (GLIP_SPEC.md §4.1)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from glipkit.model.config import LanguageConfig


@dataclass
class LanguageFeatures:
    """Token features of a batch of prompts.

    hidden: (B, L, D) BERT's last hidden state, padded positions not zeroed (the fusion input).
    embedded: (B, L, D) hidden with padded positions zeroed.
    mask: (B, L) the tokenizer's attention mask.
    """

    hidden: Tensor
    embedded: Tensor
    mask: Tensor


BERT_ATTENTION = ("eager", "sdpa")


def bert_config(cfg: LanguageConfig, attention: str = "eager"):
    """A transformers `BertConfig` with the sizes of `cfg`; `eager` attention is what GLIP was written against,
    `sdpa` (torch's scaled_dot_product_attention) computes the same function with fused kernels."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
    )
    config._attn_implementation = _checked(attention)
    return config


def _checked(attention: str) -> str:
    if attention not in BERT_ATTENTION:
        raise ValueError(f"BERT attention must be one of {', '.join(BERT_ATTENTION)}, not {attention!r}")
    return attention


class LanguageBackbone(nn.Module):
    """BertModel without pooler; features are the last hidden state (N_LAYERS = 1, §4.1)."""

    def __init__(self, cfg: LanguageConfig, attention: str = "eager") -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(bert_config(cfg, attention), add_pooling_layer=False)

    def set_attention(self, attention: str) -> None:
        """Switch BERT's attention kernels (`eager` or `sdpa`); the weights stay."""
        if self.bert.config._attn_implementation != _checked(attention):
            self.bert.set_attn_implementation(attention)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> LanguageFeatures:
        # §4.2: token_type_ids are not passed (all zero).
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embedded = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return LanguageFeatures(hidden=hidden, embedded=embedded, mask=attention_mask)
