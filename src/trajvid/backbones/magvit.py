"""MagVIT-style extractor: causal 3D-CNN tokenizer, lookup-free quantisation, bidirectional transformer.

What defines it, and is kept (MAGVIT, Yu et al. 2023; MAGVIT-2, "Language Model Beats
Diffusion -- Tokenizer is Key", 2023; google-research/magvit, lucidrains/magvit2-pytorch):
- a 3D-convolutional tokenizer encoder of ResBlocks (GroupNorm -> SiLU -> 3x3x3 conv, twice,
  with a 1x1x1 shortcut when channels change), downsampling in space and time to a token grid;
- MAGVIT-2's causal convolutions: time is padded with k-1 frames on the left only, so frame 0 is
  encoded alone and no output sees the future (GroupNorm statistics are taken per frame, so
  normalisation does not leak the future either);
- lookup-free quantisation (LFQ): each latent dimension is quantised to its sign (+-1), the token
  id is that binary code (codebook size 2^bits), gradients pass straight through, and an entropy
  loss (per-token entropy - gamma x codebook entropy) plus a commitment loss keep codes sharp
  and used; they are returned as named auxiliary losses;
- a bidirectional transformer over the tokens (MAGVIT's masked-token model without masking),
  pooled by a CLS token and projected to `feature_dim`.
Tokens enter the transformer through a linear map of their +-1 bits, which equals an embedding
table of the 2^bits ids factorised per bit and keeps the straight-through gradient path; a linear
map of the continuous latent is added to it (the token ids and the LFQ losses stay as they are).

Changed for the CPU: a patchifying causal stem (kernel (3, 4, 4), stride (2, 4, 4)) instead of a
full-resolution first conv, and narrow widths.

Shapes for the default input (B, 12, 32, 64, 64):
  stem             (B, 16, 16, 16, 16)
  level 1          (B, 16, 16, 16, 16) -> down (time and space) (B, 32, 8, 8, 8)
  level 2          (B, 32, 8, 8, 8)    -> down (space)          (B, 64, 8, 4, 4)
  level 3          (B, 64, 8, 4, 4)    -> latent (B, bits, 8, 4, 4) -> LFQ codes +-1
  tokens           (B, 128, bits) -> (B, 128, dim) (+ the continuous latent) -> transformer -> CLS -> (B, feature_dim)
  grid             the contextual tokens as a map (B, dim, 8, 4, 4), stride (4, 16, 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize
from trajvid.backbones.layers import TokenEncoder, init_weights
from trajvid.params import ParamsError, check_choice, check_positive


@dataclass(frozen=True)
class MagVitConfig(BackboneConfig):
    feature_dim: int = 1024
    channels: tuple[int, int, int] = (16, 32, 64)  # widths of the encoder levels
    time_downsample: tuple[int, int] = (1, 0)  # which level transitions also halve time
    codebook_bits: int = 10  # LFQ dimensions: codebook size 2^bits
    entropy_weight: float = 0.1
    commitment_weight: float = 0.25
    diversity_gamma: float = 1.0  # weight of the codebook entropy inside the entropy loss
    dim: int = 256
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    pool: str = "cls"  # "cls" token or "mean" over tokens

    MAX_BITS = 14  # the entropy loss holds a (tokens, 2^bits) matrix

    @classmethod
    def tiny(cls) -> MagVitConfig:
        return cls(channels=(8, 16, 32), dim=64, depth=1, heads=2, codebook_bits=6)

    def check(self, path: str) -> None:
        super().check(path)
        check_positive(self, path, "channels", "codebook_bits", "dim", "depth", "heads", "mlp_ratio")
        if self.codebook_bits > self.MAX_BITS:
            raise ParamsError(f"{path}.codebook_bits={self.codebook_bits} is not allowed: at most {self.MAX_BITS}")
        if any(t not in (0, 1) for t in self.time_downsample):
            raise ParamsError(f"{path}.time_downsample={list(self.time_downsample)} is not allowed: each entry is 0 or 1")
        for c in self.channels:
            if c % FrameGroupNorm.default_groups(c):
                raise ParamsError(f"{path}.channels={list(self.channels)} is not allowed: {c} does not split into "
                                  f"{FrameGroupNorm.default_groups(c)} normalisation groups")
        if self.dim % self.heads:
            raise ParamsError(f"{path}.dim={self.dim} is not allowed: must be divisible by heads={self.heads}")
        for name in ("entropy_weight", "commitment_weight", "diversity_gamma"):
            if getattr(self, name) < 0:
                raise ParamsError(f"{path}.{name}={getattr(self, name)} is not allowed: must be >= 0")
        check_choice(self, path, "pool", ("cls", "mean"))


class CausalConv3d(nn.Module):
    """Conv3d padded 'same' in space and with k-1 frames on the left in time (no look-ahead)."""

    def __init__(self, c_in: int, c_out: int, kernel=(3, 3, 3), stride=(1, 1, 1), space_padding: int | None = None):
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad = kt - 1
        ph = kh // 2 if space_padding is None else space_padding
        pw = kw // 2 if space_padding is None else space_padding
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(0, ph, pw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Replicate the first frame into the past, as MAGVIT-2 does, rather than zeros.
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class FrameGroupNorm(nn.Module):
    """GroupNorm with statistics per frame: (channel group, H, W) of each time step.

    A plain GroupNorm over (group, T, H, W) would let the last frames change the encoding of the
    first ones, undoing the causal convolutions.
    """

    @staticmethod
    def default_groups(channels: int) -> int:
        return min(8, max(1, channels // 4))

    def __init__(self, channels: int, groups: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.groups = groups or self.default_groups(channels)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        g = x.view(B, self.groups, C // self.groups, T, H, W)
        var, mean = torch.var_mean(g, dim=(2, 4, 5), keepdim=True, correction=0)
        g = (g - mean) * torch.rsqrt(var + self.eps)
        return g.view(B, C, T, H, W) * self.weight.view(1, C, 1, 1, 1) + self.bias.view(1, C, 1, 1, 1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = FrameGroupNorm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = FrameGroupNorm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class LookupFreeQuantizer(nn.Module):
    """sign() quantisation with a straight-through gradient and MAGVIT-2's entropy loss."""

    def __init__(self, bits: int, entropy_weight: float, commitment_weight: float, gamma: float):
        super().__init__()
        self.bits = bits
        self.entropy_weight, self.commitment_weight, self.gamma = entropy_weight, commitment_weight, gamma
        self.register_buffer("powers", 2 ** torch.arange(bits), persistent=False)
        # Every code as a +-1 vector (2^bits, bits), for the exact codebook entropy.
        codes = ((torch.arange(2**bits)[:, None] & self.powers) != 0).float() * 2 - 1
        self.register_buffer("codes", codes, persistent=False)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z (N, bits) -> quantised (N, bits) in +-1, token ids (N,), auxiliary losses."""
        # In float32 under bf16 autocast too: autocast would run the logits' matrix product over
        # all 2^bits codes in bf16, and the entropy terms are sums over them. In fp32 training
        # this changes nothing (`float()` of a float32 tensor is the tensor itself).
        with torch.autocast(z.device.type, enabled=False):
            return self._quantise(z.float())

    def _quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        q = torch.where(z > 0, 1.0, -1.0)
        ids = ((q > 0).long() * self.powers).sum(-1)
        quantised = z + (q - z).detach()  # straight-through estimator
        # p(code | z) = softmax over codes of 2 <z, code>: a factorised distribution per bit.
        # Computed in eval mode too, so that the validation loss is the training loss's definition.
        logits = 2 * z @ self.codes.t()  # (N, 2^bits)
        probs = logits.softmax(-1)
        per_token = -(probs * logits.log_softmax(-1)).sum(-1).mean()
        mean_probs = probs.mean(0)
        codebook = -(mean_probs * torch.log(mean_probs.clamp_min(1e-10))).sum()
        aux = {
            "lfq_entropy": self.entropy_weight * (per_token - self.gamma * codebook) / math.log(2),
            "lfq_commitment": self.commitment_weight * F.mse_loss(z, q),
        }
        return quantised, ids, aux


class MagVit(FeatureExtractor):
    Config = MagVitConfig
    coordinates = False  # positional embeddings say where a token is

    def __init__(self, config: MagVitConfig = MagVitConfig(), input_size: InputSize = InputSize()):
        super().__init__(config, input_size)
        if input_size.height % 16 or input_size.width % 16:
            raise ParamsError(f"data.image_size={input_size.height} is not allowed for magvit: its tokenizer "
                              "downsamples space by 16, so the size must be a multiple of 16")
        c1, c2, c3 = config.channels
        t1, t2 = config.time_downsample
        self.stem = CausalConv3d(self.in_channels, c1, kernel=(3, 4, 4), stride=(2, 4, 4), space_padding=0)
        self.encoder = nn.Sequential(
            ResBlock(c1, c1),
            CausalConv3d(c1, c2, kernel=(3, 3, 3), stride=(1 + t1, 2, 2)),  # downsample
            ResBlock(c2, c2),
            CausalConv3d(c2, c3, kernel=(3, 3, 3), stride=(1 + t2, 2, 2)),
            ResBlock(c3, c3),
            FrameGroupNorm(c3),
            nn.SiLU(),
            nn.Conv3d(c3, config.codebook_bits, 1),  # to the latent: one dimension per bit
        )
        self.quantizer = LookupFreeQuantizer(
            config.codebook_bits, config.entropy_weight, config.commitment_weight, config.diversity_gamma
        )
        frames = input_size.frames // 2 // (1 + t1) // (1 + t2)  # the stem and the downsamplings
        if frames < 1:
            raise ParamsError(f"data.num_frames={input_size.frames} is not allowed for magvit: its tokenizer "
                              f"downsamples time by {2 * (1 + t1) * (1 + t2)}")
        grid_h, grid_w = input_size.height // 16, input_size.width // 16
        self.token_embed = nn.Linear(config.codebook_bits, config.dim)
        # The continuous latent (before quantisation) enters beside the tokens: 10 sign bits per
        # 16 x 16-pixel token cannot carry a sub-pixel position, the latent can.
        self.latent_embed = nn.Linear(config.codebook_bits, config.dim)
        self.transformer = TokenEncoder((frames, grid_h * grid_w), config.dim, config.depth, config.heads,
                                        config.mlp_ratio, "joint", 0.0, config.pool)
        self.project = nn.Linear(config.dim, config.feature_dim)
        self.grid_channels = config.dim
        self.grid_stride = (input_size.frames // frames, 16, 16)
        self.apply(init_weights)
        self.last_token_ids: torch.Tensor | None = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(self.stem(x))  # (B, bits, T', H', W')
        B, bits, T, H, W = z.shape  # the token encoder checks (T, H*W) against its grid
        z = z.permute(0, 2, 3, 4, 1).reshape(-1, bits)  # one row per token
        quantised, ids, aux = self.quantizer(z)
        self.aux_losses = aux
        self.last_token_ids = ids.view(B, T, H, W).detach()
        tokens = (self.token_embed(quantised) + self.latent_embed(z)).view(B, T, H * W, -1)
        pooled, tokens = self.transformer(tokens)  # (B, dim), (B, T, H*W, dim)
        grid = tokens.transpose(2, 3).reshape(B, T, -1, H, W).transpose(1, 2)  # (B, dim, T, H, W)
        return self.project(pooled), grid
