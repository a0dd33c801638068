"""Layers shared by several backbones, so that no backbone is another backbone's library.

- `init_weights`: the explicit initialisation every model applies;
- `ConvBNReLU`: Conv3d (no bias) -> BatchNorm -> ReLU, the unit of I3D and SlowFast;
- `SelfAttention`, `Block`, `TokenEncoder`: the pre-norm transformer over a (time, space) token
  grid used by the video transformer and by MagVIT's token model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module) -> None:
    """Explicit initialisation (applied with `module.apply`)."""
    if isinstance(module, (nn.Conv3d, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ConvBNReLU(nn.Sequential):
    """Conv3d (no bias, 'same' padding) -> BatchNorm3d -> ReLU (optional)."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu: bool = True,
                 eps: float = 1e-5):
        padding = tuple(k // 2 for k in kernel)
        layers = [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
                  nn.BatchNorm3d(c_out, eps=eps)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape  # any leading batch of sequences of length N
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm encoder block over a (time, space) token grid plus an optional CLS token.

    Joint: one attention over the CLS token and all T*S tokens. Divided (TimeSformer): temporal
    attention among the tokens of one spatial patch, then spatial attention within each time step,
    where the CLS token joins every time step's sequence and its T outputs are averaged.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int, divided: bool, dropout: float):
        super().__init__()
        self.divided = divided
        self.norm_time = nn.LayerNorm(dim) if divided else None
        self.attn_time = SelfAttention(dim, heads, dropout) if divided else None
        self.norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, S, D = x.shape  # x: the token grid; cls: (B, 0 or 1, D)
        n_cls = cls.shape[1]
        if self.divided:
            xt = x.transpose(1, 2).reshape(B * S, T, D)  # one sequence per spatial patch, over time
            xt = xt + self.attn_time(self.norm_time(xt))
            x = xt.view(B, S, T, D).transpose(1, 2)
            seq = torch.cat([cls.repeat_interleave(T, dim=0), x.reshape(B * T, S, D)], dim=1)
            seq = seq + self.attn(self.norm(seq))  # one sequence per time step, over space
            cls = seq[:, :n_cls].reshape(B, T, n_cls, D).mean(1)
            x = seq[:, n_cls:].reshape(B, T, S, D)
        else:
            seq = torch.cat([cls, x.reshape(B, T * S, D)], dim=1)
            seq = seq + self.attn(self.norm(seq))
            cls, x = seq[:, :n_cls], seq[:, n_cls:].reshape(B, T, S, D)
        return x + self.mlp(self.norm_mlp(x)), cls + self.mlp(self.norm_mlp(cls))


class TokenEncoder(nn.Module):
    """Positional embeddings (one per time index plus one per spatial index, as ViViT factorises
    them), a stack of blocks and pooling: tokens (B, T, S, D) -> (B, D) and (B, T, S, D).

    `pool: cls` reads a learned CLS token, which can attend to the few tokens that see the sphere
    and carry their positional embeddings out; `pool: mean` averages all tokens.
    """

    def __init__(self, grid: tuple[int, int], dim: int, depth: int, heads: int, mlp_ratio: int,
                 attention: str = "joint", dropout: float = 0.0, pool: str = "cls"):
        super().__init__()
        if attention not in ("joint", "divided"):
            raise ValueError(f"attention={attention!r}: use 'joint' or 'divided'")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool={pool!r}: use 'cls' or 'mean'")
        self.grid = grid
        self.time_position = nn.Parameter(torch.zeros(1, grid[0], 1, dim))
        self.space_position = nn.Parameter(torch.zeros(1, 1, grid[1], dim))
        self.cls = nn.Parameter(torch.zeros(1, 1 if pool == "cls" else 0, dim))
        divided = attention == "divided"
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, divided, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)
        for p in (self.time_position, self.space_position, self.cls):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled (B, D) and the contextual tokens (B, T, S, D)."""
        B, T, S, D = tokens.shape
        if (T, S) != self.grid:
            raise ValueError(f"built for a token grid {self.grid} (time, space), got {(T, S)}")
        x = tokens + self.time_position + self.space_position
        cls = self.cls.expand(B, -1, -1)
        for block in self.blocks:
            x, cls = block(x, cls)
        pooled = cls[:, 0] if cls.shape[1] else x.mean(dim=(1, 2))
        return self.norm(pooled), x  # (B, D), (B, T, S, D)
