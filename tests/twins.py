"""Handwritten PyTorch twins of the bundled specs in specs/zoo/ (tests/test_zoo.py compares them).

Each class is written the way people write the model by hand, with the module names (and so the
``state_dict`` keys) of the implementation it stands for: ``ResNet18`` has torchvision's names,
``GPT`` those of the widely used minimal GPT implementation. Nothing here imports modelspec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ---- ResNet-18 (torchvision's module tree and key names) ------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection; ``downsample`` when the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ImageNet ResNet-18: (B, 3, H, W) -> (B, num_classes) logits; 11,689,512 parameters."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, num_classes)


# ---- GPT (key names of the widely used minimal GPT implementation) ---------------------------
@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    block_size: int = 1024


#: the GPT-2 small shape; ``GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=64, block_size=16)`` is a tiny one
GPT2_SMALL = GPTConfig()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer, (B, T) int64 token ids -> (B, T, vocab_size) logits; dropout 0.

    The output head is the token embedding (``lm_head.weight is transformer.wte.weight``): for
    GPT-2 small 124,439,808 unique parameters, 163,037,184 if the tied tensor is counted twice.
    """

    def __init__(self, cfg: GPTConfig = GPT2_SMALL) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "h": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                "ln_f": nn.LayerNorm(cfg.n_embd),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # one nn.Parameter, two uses

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        pos = torch.arange(idx.size(1), device=idx.device)  # (T,)
        x = t.wte(idx) + t.wpe(pos)  # (B, T, C)
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))  # (B, T, vocab_size)


# ---- tied autoencoder: the decoder reads the encoder's weights transposed --------------------
class TransposedLinear(nn.Module):
    """``y = x @ source.weight + bias``: the weight is ``source``'s, not a parameter of this module.

    ``source`` is kept out of the module tree (not registered), so its weight appears in
    ``parameters()`` and ``state_dict()`` once, under the encoder's name.
    """

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self._source = (source,)  # a tuple hides it from nn.Module's registration
        self.bias = nn.Parameter(torch.zeros(source.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._source[0].weight.t(), self.bias)


class TiedAutoencoder(nn.Module):
    """64 -> 32 -> 16 -> 32 -> 64; decoder.0 uses encoder.2.weight.T, decoder.2 uses encoder.0.weight.T.

    Parameters: the encoder's 2,608 plus the decoder's biases 32 + 64 = 2,704.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
        self.decoder = nn.Sequential(TransposedLinear(self.encoder[2]), nn.ReLU(), TransposedLinear(self.encoder[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class UntiedAutoencoder(nn.Module):
    """The same network with its own decoder weights: the reference for the tied gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
        self.decoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ---- siamese network: one trunk for both inputs, a distance head -----------------------------
class Siamese(nn.Module):
    """(a, b), each (B, 16) -> (B, 1) score from |trunk(a) - trunk(b)|; one trunk, run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        self.head = nn.Linear(8, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head((self.trunk(a) - self.trunk(b)).abs())


# ---- a small U-Net: two down steps, skips concatenated on the way up ------------------------
def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """(B, 1, H, W) -> (B, 2, H, W) with H, W divisible by 4; channels 8 / 16 / 32 at H, H/2, H/4."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = double_conv(1, 8)
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = double_conv(8, 16)
        self.pool2 = nn.MaxPool2d(2)
        self.bottom = double_conv(16, 32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec2 = double_conv(32, 16)  # 16 from the skip + 16 from below
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = double_conv(16, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # (B, 8, H, W)
        e2 = self.enc2(self.pool1(e1))  # (B, 16, H/2, W/2)
        b = self.bottom(self.pool2(e2))  # (B, 32, H/4, W/4)
        d2 = self.dec2(torch.cat([e2, self.up2(b)], dim=1))  # (B, 16, H/2, W/2)
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))  # (B, 8, H, W)
        return self.head(d1)
