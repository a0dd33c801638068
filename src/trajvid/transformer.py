"""A video transformer (ViViT / TimeSformer family) over space-time tubelets.

What defines it, and is kept:
- tubelet embedding: a Conv3d whose kernel equals its stride (t, p, p), one token per tubelet
  (computed as the equivalent Linear on flattened tubelets, which is far faster on a CPU);
- learned positional embeddings, factorised as ViViT does: one per time index plus one per
  spatial index, added to every token;
- pre-norm encoder blocks (LayerNorm -> attention -> residual, LayerNorm -> MLP -> residual),
  attention through `F.scaled_dot_product_attention`;
- `attention: joint` attends over all tokens at once; `attention: divided` (TimeSformer) does
  temporal attention (the same patch across time) then spatial attention (within one time step)
  in every block;
- mean pooling over tokens, a final LayerNorm and a projection to `feature_dim`.

The token count drives the cost on a CPU (shared/BACKBONES.md: 512 tokens per view trained at
1 sample/s), so the default tubelet (4, 16, 16) gives 8 x 4 x 4 = 128 tokens for the 32 x 64 x 64
fused input.

Shapes for the default input (B, 15, 32, 64, 64), dim 256:
  tubelets -> tokens (B, 8, 16, 256) = (B, 128 tokens, 256) -> blocks -> mean (B, 256) -> (B, 512)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trajvid.backbone import BackboneConfig, FeatureExtractor, fused_channels, init_weights


@dataclass(frozen=True)
class TransformerConfig(BackboneConfig):
    feature_dim: int = 512
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    tubelet: tuple[int, int, int] = (4, 16, 16)  # (time, height, width) of one token
    attention: str = "joint"  # "joint" or "divided"
    dropout: float = 0.0
    num_frames: int = 32  # input size the positional embeddings are made for
    image_size: int = 64


class TubeletEmbedding(nn.Module):
    """A Conv3d with kernel = stride = (t, p, p), computed as a Linear on the flattened tubelets.

    The two are the same function; on a CPU the Linear is an order of magnitude faster than
    oneDNN's Conv3d for such large kernels (measured: ~500 ms -> ~40 ms per step at batch 16).
    """

    def __init__(self, channels: int, dim: int, tubelet: tuple[int, int, int]):
        super().__init__()
        self.tubelet = tubelet
        self.proj = nn.Linear(channels * tubelet[0] * tubelet[1] * tubelet[2], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        t, p, q = self.tubelet
        x = x.view(B, C, T // t, t, H // p, p, W // q, q).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(B, T // t, (H // p) * (W // q), C * t * p * q)  # one row per tubelet
        return self.proj(x)  # (B, T', H'*W', dim)


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
    """Pre-norm encoder block. Joint: one attention over (T*S) tokens. Divided: time, then space."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, S, D = x.shape  # tokens kept on a (time, space) grid
        if self.divided:
            xt = x.transpose(1, 2).reshape(B * S, T, D)  # one sequence per spatial patch, over time
            xt = xt + self.attn_time(self.norm_time(xt))
            x = xt.view(B, S, T, D).transpose(1, 2)
            xs = x.reshape(B * T, S, D)  # one sequence per time step, over space
            x = (xs + self.attn(self.norm(xs))).view(B, T, S, D)
        else:
            xj = x.reshape(B, T * S, D)
            x = (xj + self.attn(self.norm(xj))).view(B, T, S, D)
        return x + self.mlp(self.norm_mlp(x))


class VideoTransformer(FeatureExtractor):
    Config = TransformerConfig

    def __init__(self, config: TransformerConfig = TransformerConfig()):
        super().__init__(config)
        if config.attention not in ("joint", "divided"):
            raise ValueError(f"transformer attention={config.attention!r}: use 'joint' or 'divided'")
        t, p, q = config.tubelet
        if config.num_frames % t or config.image_size % p or config.image_size % q:
            raise ValueError(f"tubelet {config.tubelet} must divide the input {config.num_frames}x{config.image_size}^2")
        self.grid = (config.num_frames // t, config.image_size // p, config.image_size // q)
        self.embed = TubeletEmbedding(fused_channels(), config.dim, config.tubelet)
        self.time_position = nn.Parameter(torch.zeros(1, self.grid[0], 1, config.dim))
        self.space_position = nn.Parameter(torch.zeros(1, 1, self.grid[1] * self.grid[2], config.dim))
        divided = config.attention == "divided"
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.mlp_ratio, divided, config.dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.project = nn.Linear(config.dim, config.feature_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.time_position, std=0.02)
        nn.init.trunc_normal_(self.space_position, std=0.02)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(n // k for n, k in zip(x.shape[2:], self.config.tubelet))
        if grid != self.grid:
            raise ValueError(f"transformer was built for a token grid {self.grid}, got {grid}")
        x = self.embed(x) + self.time_position + self.space_position  # (B, T', H'*W', D)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.mean(dim=(1, 2)))  # (B, D)
        return self.project(x)  # (B, feature_dim)
