"""Handwritten twins of specs/zoo/bert.yaml, bert_model.yaml and albert.yaml (tests/test_zoo8.py).

Written from the structure of Hugging Face's ``BertForMaskedLM``, ``BertModel`` and ``AlbertModel``
(transformers is not needed): the same module tree, so the same ``state_dict`` keys in the same
order, and the same forward (dropout 0, the additive attention mask ``(1 - mask) * finfo.min``
passed to scaled-dot-product attention, as transformers' default "sdpa" attention does).
The position ids are computed in ``forward``; transformers keeps them in non-persistent buffers,
which are not in ``state_dict`` either. Nothing here imports modelspec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    """bert-base-uncased; ``AlbertConfig`` below holds ALBERT's differences."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu_approximate: str = "none"  # BERT: exact GELU


@dataclass(frozen=True)
class AlbertConfig(BertConfig):
    """albert-base-v2: factorised embeddings, one layer group run 12 times, GELU with tanh."""

    vocab_size: int = 30000
    embedding_size: int = 128
    num_hidden_groups: int = 1  # 12 gives an ALBERT whose 12 layers are independent (tests' reference)
    gelu_approximate: str = "tanh"  # hidden_act 'gelu_new'


def extended_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) with 1 = attend, 0 = padding -> (B, 1, 1, T) added to the attention scores."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def self_attention(
    q: nn.Linear, k: nn.Linear, v: nn.Linear, heads: int, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over ``heads`` heads: (B, T, C) -> (B, T, C)."""
    B, T, C = x.shape

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, heads, T, C / heads)
        return t.view(B, T, heads, C // heads).transpose(1, 2)

    y = F.scaled_dot_product_attention(split(q(x)), split(k(x)), split(v(x)), attn_mask=mask)
    return y.transpose(1, 2).reshape(B, T, C)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig, width: int | None = None) -> None:
        super().__init__()
        width = width or cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, width, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(pos))


# ---- BERT ------------------------------------------------------------------------------------
class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self_attention(self.query, self.key, self.value, self.heads, x, mask)


class BertAddNorm(nn.Module):
    """BertSelfOutput and BertOutput: LayerNorm(dense(h) + residual)."""

    def __init__(self, cfg: BertConfig, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertAddNorm(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = nn.GELU(approximate=cfg.gelu_approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertAddNorm(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """tanh(dense(the first token's hidden state))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x[:, 0]))


class BertModel(nn.Module):
    """(input_ids, token_type_ids, attention_mask), each (B, T) int64 -> the last hidden states
    (B, T, 768) and, with the pooler, also the pooled first token (B, 768).

    bert-base: 109,482,240 parameters with the pooler, 108,891,648 without."""

    def __init__(self, cfg: BertConfig = BertConfig(), add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if add_pooling_layer else None

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.embeddings(input_ids, token_type_ids)
        x = self.encoder(x, extended_attention_mask(attention_mask, x.dtype))
        return x if self.pooler is None else (x, self.pooler(x))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.transform_act_fn = nn.GELU()
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform, then logits over the vocabulary; the decoder's bias IS ``self.bias``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias  # one nn.Parameter under two names, as transformers links them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertForMaskedLM(nn.Module):
    """BertModel without the pooler, and a masked-LM head whose decoder weight IS the word
    embedding: (B, T) x 3 -> (B, T, 30522) logits. 109,514,298 unique parameters."""

    def __init__(self, cfg: BertConfig = BertConfig()) -> None:
        super().__init__()
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(cfg)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tie_weights()

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.cls(self.bert(input_ids, token_type_ids, attention_mask))


# ---- ALBERT ----------------------------------------------------------------------------------
class AlbertAttention(nn.Module):
    def __init__(self, cfg: AlbertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x + self.dense(self_attention(self.query, self.key, self.value, self.heads, x, mask)))


class AlbertLayer(nn.Module):
    def __init__(self, cfg: AlbertConfig) -> None:
        super().__init__()
        self.full_layer_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = AlbertAttention(cfg)
        self.ffn = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.activation = nn.GELU(approximate=cfg.gelu_approximate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask)
        return self.full_layer_layer_norm(self.ffn_output(self.activation(self.ffn(a))) + a)


class AlbertLayerGroup(nn.Module):
    def __init__(self, cfg: AlbertConfig) -> None:
        super().__init__()
        self.albert_layers = nn.ModuleList([AlbertLayer(cfg)])  # inner_group_num = 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.albert_layers:
            x = layer(x, mask)
        return x


class AlbertTransformer(nn.Module):
    def __init__(self, cfg: AlbertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding_hidden_mapping_in = nn.Linear(cfg.embedding_size, cfg.hidden_size)
        self.albert_layer_groups = nn.ModuleList(AlbertLayerGroup(cfg) for _ in range(cfg.num_hidden_groups))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding_hidden_mapping_in(x)
        per_group = self.cfg.num_hidden_layers // self.cfg.num_hidden_groups
        for i in range(self.cfg.num_hidden_layers):  # with one group: the same layer, 12 times
            x = self.albert_layer_groups[i // per_group](x, mask)
        return x


class AlbertModel(nn.Module):
    """(input_ids, token_type_ids, attention_mask) -> the last hidden states (B, T, 768) and the
    pooled first token (B, 768). albert-base: 11,683,584 parameters."""

    def __init__(self, cfg: AlbertConfig = AlbertConfig()) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg, cfg.embedding_size)  # AlbertEmbeddings: the same tree
        self.encoder = AlbertTransformer(cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.pooler_activation = nn.Tanh()

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embeddings(input_ids, token_type_ids)
        x = self.encoder(x, extended_attention_mask(attention_mask, x.dtype))
        return x, self.pooler_activation(self.pooler(x[:, 0]))
