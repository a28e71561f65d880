"""Layers that real architectures need and ``torch.nn`` lacks, shipped with modelspec.

Every spec can name them, like ``torch.nn`` classes (no plugin needed); they are ordinary
modules that can also be used directly in Python::

    from modelspec.layers import CausalSelfAttention
    attn = CausalSelfAttention(768, 12)      # GPT-2 small's attention: c_attn, c_proj

In a spec::

    attn: {CausalSelfAttention: {n_embd: 768, n_head: 12}}

Constructor arguments are plain-typed, so the registry checks a spec's values against
them and the JSON Schema describes them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CausalSelfAttention"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with GPT-2's parameter names (``c_attn``, ``c_proj``).

    ``(B, T, n_embd) -> (B, T, n_embd)``: one linear layer ``c_attn`` makes the queries, keys
    and values of all heads, ``F.scaled_dot_product_attention(is_causal=True)`` lets each
    position attend to itself and earlier ones, and ``c_proj`` mixes the heads. The state
    dict is GPT-2's: ``c_attn.weight`` [3 * n_embd, n_embd], ``c_attn.bias``,
    ``c_proj.weight`` [n_embd, n_embd], ``c_proj.bias`` (as ``nn.Linear`` stores them; the
    original checkpoints' Conv1D weights are these transposed).

    Args:
        n_embd: the width; a multiple of ``n_head``.
        n_head: the number of heads, each of width ``n_embd // n_head``.
        bias: whether both linear layers have a bias.
        dropout: dropout on the attention weights and on the output, in training only.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        bias: bool = True,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if n_embd <= 0 or n_head <= 0 or n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a positive multiple of n_head ({n_head})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.n_embd, self.n_head, self.dropout = n_embd, n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias, **factory)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias, **factory)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, n_head, T, head width)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, n_head={self.n_head}, dropout={self.dropout}"
