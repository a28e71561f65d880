"""Small tied models for the tie tests: specs, and the same models written by hand.

``AE``: a tied autoencoder, the decoder's weight is the encoder's weight transposed.
``LM``: a tiny language model whose output head is the token embedding.
``LM_UNTIED``: the same model without the tie.
``AUTOENCODER``: a named tied autoencoder, for the report and diagram tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

AE = """\
modelspec: 1
input: {shape: [3, 20]}
model:
  nodes:
    encoder: {Linear: [20, 5]}
    act: Tanh
    decoder: {Linear: [5, 20]}
ties:
  - {param: decoder.weight, to: encoder.weight, transposed: true}
"""

AUTOENCODER = """\
modelspec: 1
name: tied-ae
input: {shape: [2, 20]}
model:
  nodes:
    encoder: {Linear: [20, 5]}
    act: ReLU
    decoder: {Linear: [5, 20]}
ties:
  - {param: decoder.weight, to: encoder.weight, transposed: true}
"""

LM_UNTIED = """\
modelspec: 1
input: {shape: [2, 6], dtype: int64}
model:
  nodes:
    transformer.wte: {Embedding: [11, 4]}
    transformer.ln_f: {LayerNorm: 4}
    lm_head: {Linear: [4, 11, {bias: false}]}
"""

LM = LM_UNTIED + "ties:\n  - {param: lm_head.weight, to: transformer.wte.weight}\n"

TOKENS = torch.tensor([[1, 4, 2, 9, 0, 3], [7, 7, 5, 10, 6, 2]])


class HandLM(nn.Module):
    """``LM`` by hand; ``head_first`` registers ``lm_head`` before ``transformer``."""

    def __init__(self, *, tied: bool, head_first: bool = False) -> None:
        super().__init__()
        if head_first:
            self.lm_head = nn.Linear(4, 11, bias=False)
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(11, 4), "ln_f": nn.LayerNorm(4)})
        if not head_first:
            self.lm_head = nn.Linear(4, 11, bias=False)
        if tied:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.transformer.ln_f(self.transformer.wte(idx)))


class HandAE(nn.Module):
    """``AE`` by hand, untied: the decoder has its own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(20, 5)
        self.act = nn.Tanh()
        self.decoder = nn.Linear(5, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.act(self.encoder(x)))


def untied_lm_grads(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
    """The gradient a tied LM's shared weight must get: an untied copy, each use with its
    own parameter holding the same values, and the two uses' gradients added."""
    ref = HandLM(tied=False)
    ref.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    loss_of(ref).backward()
    return ref.transformer.wte.weight.grad + ref.lm_head.weight.grad


def untied_ae_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a tied AE: the encoder use's and the decoder use's gradients of the shared
    weight, computed with each use explicit (decoder: ``F.linear(h, w.t())``), and their sum."""
    w = model.encoder.weight.detach().clone().requires_grad_(True)  # the encoder's use
    wd = model.encoder.weight.detach().clone().requires_grad_(True)  # the decoder's use
    h = torch.tanh(nn.functional.linear(x, w, model.encoder.bias.detach()))
    y = nn.functional.linear(h, wd.t(), model.decoder.bias.detach())
    y.sum().backward()
    assert w.grad is not None and wd.grad is not None
    return w.grad, wd.grad, w.grad + wd.grad
