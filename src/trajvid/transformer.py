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
- a CLS token (or mean pooling over tokens), a final LayerNorm and a projection to `feature_dim`.

The token count drives the cost on a CPU (shared/BACKBONES.md: 512 tokens per view trained at
1 sample/s), so the default tubelet (4, 16, 16) gives 8 x 4 x 4 = 128 tokens for the 32 x 64 x 64
fused input.

Shapes for the default input (B, 12, 32, 64, 64), dim 256:
  tubelets -> tokens (B, 8, 16, 256) = (B, 128 tokens, 256) -> blocks -> CLS (B, 256) -> (B, 512)
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
    pool: str = "cls"  # "cls" token or "mean" over tokens
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
    them), a stack of blocks and pooling: tokens (B, T, S, D) -> (B, D).

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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T, S, D = tokens.shape
        if (T, S) != self.grid:
            raise ValueError(f"built for a token grid {self.grid} (time, space), got {(T, S)}")
        x = tokens + self.time_position + self.space_position
        cls = self.cls.expand(B, -1, -1)
        for block in self.blocks:
            x, cls = block(x, cls)
        pooled = cls[:, 0] if cls.shape[1] else x.mean(dim=(1, 2))
        return self.norm(pooled)  # (B, D)


class VideoTransformer(FeatureExtractor):
    coordinates = False  # positional embeddings say where a token is
    Config = TransformerConfig

    def __init__(self, config: TransformerConfig = TransformerConfig()):
        super().__init__(config)
        t, p, q = config.tubelet
        if config.num_frames % t or config.image_size % p or config.image_size % q:
            raise ValueError(f"tubelet {config.tubelet} must divide the input {config.num_frames}x{config.image_size}^2")
        grid = (config.num_frames // t, (config.image_size // p) * (config.image_size // q))
        self.embed = TubeletEmbedding(fused_channels(coordinates=self.coordinates), config.dim, config.tubelet)
        self.encoder = TokenEncoder(grid, config.dim, config.depth,
                                    config.heads, config.mlp_ratio, config.attention, config.dropout, config.pool)
        self.project = nn.Linear(config.dim, config.feature_dim)
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # the token encoder checks the grid
        return self.project(self.encoder(self.embed(x)))  # tokens (B, T', H'*W', D) -> (B, feature_dim)
