"""Camera geometry shared by the classical baseline and the keypoints head: projection matrices
from the dataset's cameras, projection of world points, and multi-view triangulation."""

from __future__ import annotations

import numpy as np
import torch


def projection_matrices(cameras: dict) -> torch.Tensor:
    """P = K [R | t] per camera (V, 3, 4), float64, from the dataset's camera metadata."""
    K, R, t = (torch.as_tensor(np.asarray(cameras[k]), dtype=torch.float64) for k in ("K", "R", "t"))
    return K @ torch.cat([R, t[:, :, None]], dim=2)


def triangulate(uv: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """World points (..., 3) from pixels (..., V, 2) in cameras P (V, 3, 4): the linear
    least-squares (DLT) solution of u P3 - P1 = 0, v P3 - P2 = 0 on [X; 1], in float64."""
    uv = uv.double()
    rows = torch.cat([uv[..., 0:1, None] * P[:, 2:3] - P[:, 0:1], uv[..., 1:2, None] * P[:, 2:3] - P[:, 1:2]], dim=-2)
    rows = rows.flatten(-3, -2)  # (..., 2V, 4)
    A, b = rows[..., :3], -rows[..., 3:]
    At = A.transpose(-1, -2)
    return torch.linalg.solve(At @ A, At @ b)[..., 0]


def project(points: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Pixels (B, V, T, 2) of world points (B, T, 3) in cameras P (V, 3, 4)."""
    homogeneous = torch.cat([points.double(), torch.ones_like(points[..., :1], dtype=torch.float64)], dim=-1)
    image = torch.einsum("vij,btj->bvti", P, homogeneous)
    return (image[..., :2] / image[..., 2:]).float()
