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

The token count drives the cost on a CPU (docs/design.md: 512 tokens per view trained at
1 sample/s), so the default tubelet (4, 16, 16) gives 8 x 4 x 4 = 128 tokens for the 32 x 64 x 64
fused input.

Shapes for the default input (B, 12, 32, 64, 64), dim 256:
  tubelets -> tokens (B, 8, 16, 256) = (B, 128 tokens, 256) -> blocks -> CLS (B, 256) -> (B, 512)
  grid: the contextual tokens as a map (B, 256, 8, 4, 4), stride (4, 16, 16)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize
from trajvid.backbones.layers import TokenEncoder, init_weights
from trajvid.params import ParamsError, check_choice, check_positive


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

    @classmethod
    def tiny(cls) -> TransformerConfig:
        return cls(dim=64, depth=1, heads=2)

    def check(self, path: str) -> None:
        super().check(path)
        check_positive(self, path, "dim", "depth", "heads", "mlp_ratio", "tubelet")
        if self.dim % self.heads:
            raise ParamsError(f"{path}.dim={self.dim} is not allowed: must be divisible by heads={self.heads}")
        check_choice(self, path, "attention", ("joint", "divided"))
        check_choice(self, path, "pool", ("cls", "mean"))


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


class VideoTransformer(FeatureExtractor):
    Config = TransformerConfig
    coordinates = False  # positional embeddings say where a token is

    def __init__(self, config: TransformerConfig = TransformerConfig(), input_size: InputSize = InputSize()):
        super().__init__(config, input_size)
        t, p, q = config.tubelet
        T, H, W = input_size.frames, input_size.height, input_size.width
        if T % t or H % p or W % q:
            raise ParamsError(f"models.transformer.tubelet={list(config.tubelet)} is not allowed: it must divide "
                              f"the data's (frames, height, width) = {(T, H, W)}")
        grid = (T // t, (H // p) * (W // q))
        self.embed = TubeletEmbedding(self.in_channels, config.dim, config.tubelet)
        self.encoder = TokenEncoder(grid, config.dim, config.depth,
                                    config.heads, config.mlp_ratio, config.attention, config.dropout, config.pool)
        self.project = nn.Linear(config.dim, config.feature_dim)
        self.grid_channels, self.grid_stride = config.dim, (t, p, q)
        self.grid_hw = (H // p, W // q)
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # the token encoder checks the grid
        pooled, tokens = self.encoder(self.embed(x))  # tokens (B, T', H'*W', D)
        B, T, _, D = tokens.shape
        grid = tokens.transpose(2, 3).reshape(B, T, D, *self.grid_hw).transpose(1, 2)  # (B, D, T', H', W')
        return self.project(pooled), grid
