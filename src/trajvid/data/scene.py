"""The scene of docs/data.md ("Scene", "Classes"): four fixed cameras, four classes of 3D motion, a rendered sphere.

Everything here is plain numpy and deterministic: a sample is a pure function of (seed, sample_id),
so generation can be split over any number of processes and still produce identical bytes.
"""

from __future__ import annotations

import math

import numpy as np

CLASS_NAMES = ("linear", "circular", "helical", "parabolic")
NUM_CAMERAS = 4
CUBE_HALF = 1.5  # every position lies in [-1.5, 1.5]^3
SPHERE_RADIUS = 0.15
CAMERA_DISTANCE = 5.0
CAMERA_HEIGHT = 2.0
FIELD_OF_VIEW_DEG = 60.0

BACKGROUND = np.array([12, 14, 20], dtype=np.float32)  # dark, static, the same in every frame
SPHERE_COLOUR = np.array([235, 175, 85], dtype=np.float32)  # one colour for every class
AMBIENT = 0.35  # shading = AMBIENT + (1 - AMBIENT) * cos(angle to the camera)

# The sampling ranges of each class (docs/data.md, "Classes"; adjusted so every point stays in the cube).
# The dataset card prints this table, so what is documented is what is used.
RANGES = {
    "linear": {"path_length": (1.5, 2.5)},
    "circular": {
        "centre_offset": (0.0, 0.3),
        "radius": (0.5, 1.2),
        "height": (-1.3, 1.3),
        "sweep_rad": (1.5 * math.pi, 2.0 * math.pi),
    },
    "helical": {
        "centre_offset": (0.0, 0.3),
        "radius": (0.5, 1.2),
        "climb": (0.6, 2.0),
        "sweep_rad": (1.5 * math.pi, 2.0 * math.pi),
    },
    "parabolic": {
        "curvature": (0.3, 0.8),
        "horizontal_length": (1.5, 2.5),
        "vertex_fraction": (0.3, 0.7),
    },
}


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


def camera_matrices(image_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intrinsics K (4, 3, 3), rotations R (4, 3, 3) and translations t (4, 3), OpenCV convention.

    A world point X maps to camera coordinates R @ X + t (x right, y down, z forward) and to the
    pixel (u, v) = (K @ Xc)[:2] / Xc[2], with pixel (0, 0)'s centre at (0.5, 0.5).
    """
    focal = (image_size / 2) / math.tan(math.radians(FIELD_OF_VIEW_DEG / 2))
    K = np.array([[focal, 0, image_size / 2], [0, focal, image_size / 2], [0, 0, 1]], dtype=np.float64)
    Ks, Rs, ts = [], [], []
    for azimuth in (0.0, 90.0, 180.0, 270.0):
        a = math.radians(azimuth)
        centre = np.array([CAMERA_DISTANCE * math.cos(a), CAMERA_DISTANCE * math.sin(a), CAMERA_HEIGHT])
        forward = -centre / np.linalg.norm(centre)  # looks at the origin
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])
        Ks.append(K)
        Rs.append(R)
        ts.append(-R @ centre)
    return np.stack(Ks), np.stack(Rs), np.stack(ts)


def cameras_metadata(image_size: int = 64) -> dict:
    """The cameras as every dataset stores them (its metadata and card) and the keypoints head reads them."""
    K, R, t = camera_matrices(image_size)
    return {
        "convention": "OpenCV: x_cam = R @ x_world + t; (u, v) = (K @ x_cam)[:2] / x_cam[2]; pixel (0,0) centre at (0.5, 0.5)",
        "azimuth_deg": [0, 90, 180, 270],
        "K": np.round(K, 10).tolist(),
        "R": np.round(R, 10).tolist(),
        "t": np.round(t, 10).tolist(),
    }


def to_pixels(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (..., 3) into every camera: pixels (..., C, 2) and depths (..., C)."""
    cam = np.einsum("cij,...j->...ci", R, points) + t  # (..., C, 3)
    depth = cam[..., 2]
    uv = np.einsum("cij,...cj->...ci", K[:, :2, :], cam) / depth[..., None]
    return uv, depth


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _start_inside(rng: np.random.Generator, displacement: np.ndarray) -> np.ndarray:
    """A start point such that start + s * displacement stays in the cube for s in [0, 1]."""
    low = -CUBE_HALF - np.minimum(displacement, 0.0)
    high = CUBE_HALF - np.maximum(displacement, 0.0)
    return rng.uniform(low, high)


def _horizontal_circle(rng: np.random.Generator, ranges: dict, t: np.ndarray) -> np.ndarray:
    """(T, 2) points of a horizontal arc, centre within the offset disc, at constant angular speed."""
    offset = _uniform(rng, ranges["centre_offset"])
    offset_angle = rng.uniform(0, 2 * math.pi)
    centre = offset * np.array([math.cos(offset_angle), math.sin(offset_angle)])
    radius = _uniform(rng, ranges["radius"])
    phase = rng.uniform(0, 2 * math.pi)
    direction = rng.choice([-1.0, 1.0])
    angle = phase + direction * _uniform(rng, ranges["sweep_rad"]) * t
    return centre + radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def trajectory(label: int, rng: np.random.Generator, num_positions: int) -> np.ndarray:
    """(num_positions, 3) float64 positions of one motion of class `label` at constant parameter speed."""
    t = np.linspace(0.0, 1.0, num_positions)
    name = CLASS_NAMES[label]
    ranges = RANGES[name]
    if name == "linear":
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        displacement = _uniform(rng, ranges["path_length"]) * direction
        return _start_inside(rng, displacement) + t[:, None] * displacement
    if name == "circular":
        xy = _horizontal_circle(rng, ranges, t)
        z = np.full_like(t, _uniform(rng, ranges["height"]))
        return np.column_stack([xy, z])
    if name == "helical":
        xy = _horizontal_circle(rng, ranges, t)
        climb = _uniform(rng, ranges["climb"]) * rng.choice([-1.0, 1.0])
        z_start = rng.uniform(-CUBE_HALF - min(climb, 0.0), CUBE_HALF - max(climb, 0.0))
        return np.column_stack([xy, z_start + climb * t])
    if name == "parabolic":
        heading = rng.uniform(0, 2 * math.pi)
        along = np.array([math.cos(heading), math.sin(heading), 0.0])
        length = _uniform(rng, ranges["horizontal_length"])
        s = length * (t - _uniform(rng, ranges["vertex_fraction"]))  # signed distance from the vertex
        curvature = _uniform(rng, ranges["curvature"]) * rng.choice([-1.0, 1.0])  # + opens up
        lift = curvature * s**2
        span = np.array([*(length * along[:2]), 0.0])
        start = _start_inside(rng, span)
        z_vertex = rng.uniform(-CUBE_HALF - lift.min(), CUBE_HALF - lift.max())
        points = start + t[:, None] * span
        points[:, 2] = z_vertex + lift
        return points
    raise ValueError(f"unknown class id {label}; allowed: 0..{len(CLASS_NAMES) - 1}")


def sample_positions(seed: int, sample_id: int, num_frames: int, noise_std: float) -> tuple[int, np.ndarray]:
    """Label and (num_frames + 1, 3) float32 positions of one sample: row num_frames is the next frame."""
    label = sample_id % len(CLASS_NAMES)
    rng = np.random.default_rng([seed, sample_id])
    points = trajectory(label, rng, num_frames + 1)
    if noise_std > 0:
        points = np.clip(points + rng.normal(scale=noise_std, size=points.shape), -CUBE_HALF, CUBE_HALF)
    return label, points.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

class Renderer:
    """Draws spheres into a reusable channel-last frame buffer (n, camera, frame, H, W, 3) uint8.

    Only a small window around each sphere differs from the background, so instead of clearing
    the whole buffer for every chunk (the cost that dominated a first prototype) the windows
    just drawn are painted back to the background by `erase`.
    """

    def __init__(self, capacity: int, num_frames: int, image_size: int):
        self.K, self.R, self.t = camera_matrices(image_size)
        self.image_size = image_size
        self.frame_shape = (NUM_CAMERAS, num_frames, image_size, image_size, 3)
        self.buffer = np.empty((capacity, *self.frame_shape), dtype=np.uint8)
        self.buffer[...] = BACKGROUND.astype(np.uint8)
        self._last_index: np.ndarray | None = None
        self._background = np.empty(0, dtype=np.uint8)  # background bytes, tiled to a window list's size
        # Each sphere is drawn in a square window of pixels reaching `reach` pixels either side of
        # the one holding its centre: enough for the largest sphere (the nearest point of the cube)
        # plus its one-pixel anti-aliased rim.
        nearest = CAMERA_DISTANCE - math.sqrt(3) * CUBE_HALF
        self.reach = math.ceil(self.K[0, 0, 0] * SPHERE_RADIUS / nearest + 0.5)
        self.window = 2 * self.reach + 1

    def render(self, positions: np.ndarray) -> np.ndarray:
        """Render frames for positions (n, F(+1), 3); returns a view of the buffer (n, C, F, H, W, 3)."""
        n = positions.shape[0]
        num_frames = self.frame_shape[1]
        uv, depth = to_pixels(positions[:, :num_frames].astype(np.float64), self.K, self.R, self.t)
        uv = np.moveaxis(uv, 2, 1)  # (n, C, F, 2)
        depth = np.moveaxis(depth, 2, 1)  # (n, C, F)
        radius = (self.K[0, 0, 0] * SPHERE_RADIUS / depth).astype(np.float32)  # perspective: shrinks with depth
        origin = np.floor(uv).astype(np.int64) - self.reach  # top-left pixel of each window
        if origin.min() < 0 or origin.max() + self.window > self.image_size:
            raise ValueError("a sphere reaches the image border; positions must lie in the cube [-1.5, 1.5]^3")
        offsets = np.arange(self.window, dtype=np.float32) + 0.5
        dx = origin[..., 0, None].astype(np.float32) + offsets - uv[..., 0, None].astype(np.float32)  # (n,C,F,W)
        dy = origin[..., 1, None].astype(np.float32) + offsets - uv[..., 1, None].astype(np.float32)
        dist = np.sqrt(dy[..., :, None] ** 2 + dx[..., None, :] ** 2)  # (n, C, F, W, W)
        r = radius[..., None, None]
        coverage = np.clip(r + 0.5 - dist, 0.0, 1.0)  # anti-aliased edge, one pixel wide
        facing = np.sqrt(np.clip(1.0 - (dist / r) ** 2, 0.0, 1.0))  # headlight shading, symmetric
        light = AMBIENT + (1.0 - AMBIENT) * facing
        pixels = np.empty((*coverage.shape, 3), dtype=np.uint8)  # (n, C, F, W, W, 3)
        for channel in range(3):  # one channel at a time: numpy is slow on a trailing axis of 3
            bg, fg = BACKGROUND[channel], SPHERE_COLOUR[channel]
            pixels[..., channel] = np.rint(bg + coverage * (light * fg - bg))

        index = self._flat_index(origin)
        self.buffer.reshape(-1)[index] = pixels.reshape(-1)
        self._last_index = index
        return self.buffer[:n]

    def erase(self) -> None:
        """Paint the windows of the last `render` back to the background."""
        if self._last_index is not None:
            size = self._last_index.size
            if self._background.size < size:
                self._background = np.tile(BACKGROUND.astype(np.uint8), size // 3)
            self.buffer.reshape(-1)[self._last_index] = self._background[:size]
            self._last_index = None

    def _flat_index(self, origin: np.ndarray) -> np.ndarray:
        """Flat buffer indices of every byte of every window, in (n, C, F, row, column, channel) order."""
        n, C, F = origin.shape[:3]
        H = W = self.image_size
        frame = (np.arange(n)[:, None, None] * C + np.arange(C)[None, :, None]) * F + np.arange(F)
        base = frame * (H * W * 3) + origin[..., 1] * (W * 3) + origin[..., 0] * 3  # (n, C, F)
        rows = np.arange(self.window) * (W * 3)
        cols = np.arange(self.window * 3)
        return (base[..., None, None] + rows[:, None] + cols[None, :]).reshape(-1)
