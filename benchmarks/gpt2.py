"""A GPT-2-small-sized module in plain PyTorch (no modelspec), for benchmarks.

124,439,808 unique parameters: the output head's weight is the token embedding's
(``lm_head.weight = wte.weight``), so the naive per-name count is 163,037,184.
Attention is reduced to its parameter-holding projections: a benchmark of reports
and checkpoints needs the tensors, not the forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB, CONTEXT, WIDTH, LAYERS = 50257, 1024, 768, 12


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(WIDTH, 3 * WIDTH), "c_proj": nn.Linear(WIDTH, WIDTH)})
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(WIDTH, 4 * WIDTH), "c_proj": nn.Linear(4 * WIDTH, WIDTH)})


class GPT2Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(CONTEXT, WIDTH)
        self.h = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # the tie, as in GPT-2


def gpt2_small(seed: int = 0) -> GPT2Small:
    torch.manual_seed(seed)
    return GPT2Small()
