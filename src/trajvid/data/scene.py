"""The scene of docs/data.md ("Scene", "Classes"): four fixed cameras, four classes of 3D motion, a rendered sphere.

Everything here is plain numpy and deterministic: a sample is a pure function of (seed, sample_id),
so generation can be split over any number of processes and still produce identical bytes.
"""

from __future__ import annotations

import math

import numpy as np

from trajvid.params import CameraRigParams, ParamsError

CLASS_NAMES = ("linear", "circular", "helical", "parabolic")
NUM_CAMERAS = 4
CUBE_HALF = 1.5  # every position lies in [-1.5, 1.5]^3
SPHERE_RADIUS = 0.15
DEFAULT_RIG = CameraRigParams()  # distance 5, height 2, 60 degrees, azimuths 0/90/180/270: params.yaml's data.cameras
AZIMUTHS_DEG = (0, 90, 180, 270)  # of the four cameras, before data.cameras.azimuth_offset_deg
MAX_DRAWS = 1000  # a motion drawn outside the cube (only possible with data.speed > 1) is drawn again

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


def _azimuths(rig: CameraRigParams) -> list:
    """The four azimuths in degrees; whole numbers stay ints (the default card prints [0, 90, 180, 270])."""
    return [int(a) if float(a).is_integer() else a for a in (base + rig.azimuth_offset_deg for base in AZIMUTHS_DEG)]


def camera_matrices(image_size: int = 64, rig: CameraRigParams = DEFAULT_RIG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intrinsics K (4, 3, 3), rotations R (4, 3, 3) and translations t (4, 3), OpenCV convention.

    A world point X maps to camera coordinates R @ X + t (x right, y down, z forward) and to the
    pixel (u, v) = (K @ Xc)[:2] / Xc[2], with pixel (0, 0)'s centre at (0.5, 0.5).
    """
    focal = (image_size / 2) / math.tan(math.radians(rig.fov_deg / 2))
    K = np.array([[focal, 0, image_size / 2], [0, focal, image_size / 2], [0, 0, 1]], dtype=np.float64)
    Ks, Rs, ts = [], [], []
    for azimuth in _azimuths(rig):
        a = math.radians(float(azimuth))
        centre = np.array([rig.distance * math.cos(a), rig.distance * math.sin(a), rig.height])
        forward = -centre / np.linalg.norm(centre)  # looks at the origin
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])
        Ks.append(K)
        Rs.append(R)
        ts.append(-R @ centre)
    return np.stack(Ks), np.stack(Rs), np.stack(ts)


def cameras_metadata(image_size: int = 64, rig: CameraRigParams = DEFAULT_RIG) -> dict:
    """The cameras as every dataset stores them (its metadata and card) and the keypoints head reads them."""
    K, R, t = camera_matrices(image_size, rig)
    return {
        "convention": "OpenCV: x_cam = R @ x_world + t; (u, v) = (K @ x_cam)[:2] / x_cam[2]; pixel (0,0) centre at (0.5, 0.5)",
        "azimuth_deg": _azimuths(rig),
        "K": np.round(K, 10).tolist(),
        "R": np.round(R, 10).tolist(),
        "t": np.round(t, 10).tolist(),
    }


def sphere_reach(K: np.ndarray, t: np.ndarray) -> int:
    """Pixels either side of a sphere's centre pixel that its drawing may touch, in the cameras of
    intrinsics K (C, 3, 3) and translations t (C, 3): the largest sphere (the nearest a point of the
    cube can come to a camera; |t| is a camera's distance from the origin) plus its one-pixel
    anti-aliased rim. The renderer's window and the baseline's centroid window both use it."""
    focal = float(np.max(np.asarray(K, dtype=np.float64)[:, 0, 0]))
    distance = float(np.min(np.linalg.norm(np.asarray(t, dtype=np.float64), axis=-1)))
    return math.ceil(focal * SPHERE_RADIUS / (distance - math.sqrt(3) * CUBE_HALF) + 0.5)


def check_rig(image_size: int, rig: CameraRigParams, path: str = "data.cameras") -> None:
    """Raise ParamsError unless every camera sees the whole cube, its spheres included, inside the image."""
    what = (f"{path} (azimuth_offset_deg {rig.azimuth_offset_deg:g}, distance {rig.distance:g}, height "
            f"{rig.height:g}, fov_deg {rig.fov_deg:g})")
    if not math.hypot(rig.distance, rig.height) > math.sqrt(3) * CUBE_HALF + SPHERE_RADIUS:
        raise ParamsError(f"{what} puts the cameras inside the scene: their distance from the origin must exceed "
                          f"{math.sqrt(3) * CUBE_HALF + SPHERE_RADIUS:.2f}")
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64) * CUBE_HALF
    K, R, t = camera_matrices(image_size, rig)
    uv, _ = to_pixels(corners, K, R, t)  # the cube's image is its corners' hull
    reach = sphere_reach(K, t)
    if np.floor(uv).min() - reach < 0 or np.floor(uv).max() + reach + 1 > image_size:
        raise ParamsError(f"{what} does not see the whole cube [-{CUBE_HALF}, {CUBE_HALF}]^3 in {image_size}-px "
                          "images; move the cameras back (distance) or widen the field of view (fov_deg)")


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


def _start_inside(rng: np.random.Generator, displacement: np.ndarray) -> np.ndarray | None:
    """A start point such that start + s * displacement stays in the cube for s in [0, 1]; None
    where no start can (a displacement longer than the cube)."""
    low = -CUBE_HALF - np.minimum(displacement, 0.0)
    high = CUBE_HALF - np.maximum(displacement, 0.0)
    if np.any(low > high):
        return None
    return rng.uniform(low, high)


def _horizontal_circle(rng: np.random.Generator, ranges: dict, t: np.ndarray, speed: float) -> np.ndarray:
    """(T, 2) points of a horizontal arc, centre within the offset disc, at constant angular speed."""
    offset = _uniform(rng, ranges["centre_offset"])
    offset_angle = rng.uniform(0, 2 * math.pi)
    centre = offset * np.array([math.cos(offset_angle), math.sin(offset_angle)])
    radius = _uniform(rng, ranges["radius"])
    phase = rng.uniform(0, 2 * math.pi)
    direction = rng.choice([-1.0, 1.0])
    angle = phase + direction * (_uniform(rng, ranges["sweep_rad"]) * speed) * t
    return centre + radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _draw(name: str, rng: np.random.Generator, t: np.ndarray, speed: float) -> np.ndarray | None:
    """One motion of class `name` over the parameter values t in [0, 1]; None where the draw
    cannot fit in the cube. `speed` multiplies how far it goes: path length, sweep, climb."""
    ranges = RANGES[name]
    if name == "linear":
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        displacement = (_uniform(rng, ranges["path_length"]) * speed) * direction
        start = _start_inside(rng, displacement)
        return None if start is None else start + t[:, None] * displacement
    if name == "circular":
        xy = _horizontal_circle(rng, ranges, t, speed)
        z = np.full_like(t, _uniform(rng, ranges["height"]))
        return np.column_stack([xy, z])
    if name == "helical":
        xy = _horizontal_circle(rng, ranges, t, speed)
        climb = (_uniform(rng, ranges["climb"]) * speed) * rng.choice([-1.0, 1.0])
        if abs(climb) > 2 * CUBE_HALF:
            return None
        z_start = rng.uniform(-CUBE_HALF - min(climb, 0.0), CUBE_HALF - max(climb, 0.0))
        return np.column_stack([xy, z_start + climb * t])
    if name == "parabolic":
        heading = rng.uniform(0, 2 * math.pi)
        along = np.array([math.cos(heading), math.sin(heading), 0.0])
        length = _uniform(rng, ranges["horizontal_length"]) * speed
        s = length * (t - _uniform(rng, ranges["vertex_fraction"]))  # signed distance from the vertex
        curvature = _uniform(rng, ranges["curvature"]) * rng.choice([-1.0, 1.0])  # + opens up
        lift = curvature * s**2
        span = np.array([*(length * along[:2]), 0.0])
        start = _start_inside(rng, span)
        if start is None or lift.max() - lift.min() > 2 * CUBE_HALF:
            return None
        z_vertex = rng.uniform(-CUBE_HALF - lift.min(), CUBE_HALF - lift.max())
        points = start + t[:, None] * span
        points[:, 2] = z_vertex + lift
        return points
    raise ValueError(f"unknown class {name!r}; allowed: {', '.join(CLASS_NAMES)}")


def trajectory(label: int, rng: np.random.Generator, num_positions: int, speed: float = 1.0) -> np.ndarray:
    """(num_positions, 3) float64 positions of one motion of class `label` at constant parameter speed.

    At speed 1 every draw fits in the cube by construction (the default dataset is the first draw
    of every sample). A faster motion that does not fit is drawn again from the same random
    stream, so the faster dataset's motions are the default distributions *given that they fit*:
    fewer long straight paths along an axis and flat parabolas, which docs/data.md says."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"unknown class id {label}; allowed: 0..{len(CLASS_NAMES) - 1}")
    t = np.linspace(0.0, 1.0, num_positions)
    for _ in range(MAX_DRAWS):
        points = _draw(CLASS_NAMES[label], rng, t, speed)
        if points is not None and np.abs(points).max() <= CUBE_HALF + 1e-9:
            return points
    raise ParamsError(f"data.speed={speed} leaves no {CLASS_NAMES[label]} motion inside the cube in {MAX_DRAWS} "
                      "draws; use a lower data.speed")


def sample_positions(seed: int, sample_id: int, num_frames: int, noise_std: float,
                     speed: float = 1.0) -> tuple[int, np.ndarray]:
    """Label and (num_frames + 1, 3) float32 positions of one sample: row num_frames is the next frame."""
    label = sample_id % len(CLASS_NAMES)
    rng = np.random.default_rng([seed, sample_id])
    points = trajectory(label, rng, num_frames + 1, speed)
    if noise_std > 0:
        points = np.clip(points + rng.normal(scale=noise_std, size=points.shape), -CUBE_HALF, CUBE_HALF)
    return label, points.astype(np.float32)


PIXEL_NOISE_STREAM = 2  # a sample's sensor noise comes from default_rng([seed, sample_id, 2])


def add_pixel_noise(frames: np.ndarray, seed: int, sample_id: int, std: float) -> np.ndarray:
    """A copy of one sample's uint8 frames with Gaussian sensor noise of `std` levels, rounded and
    clipped to [0, 255]; a pure function of (seed, sample_id), like the sample itself."""
    rng = np.random.default_rng([seed, sample_id, PIXEL_NOISE_STREAM])
    noisy = frames.astype(np.float32) + rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(std)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

class Renderer:
    """Draws spheres into a reusable channel-last frame buffer (n, camera, frame, H, W, 3) uint8.

    Only a small window around each sphere differs from the background, so instead of clearing
    the whole buffer for every chunk (the cost that dominated a first prototype) the windows
    just drawn are painted back to the background by `erase`.
    """

    def __init__(self, capacity: int, num_frames: int, image_size: int, rig: CameraRigParams = DEFAULT_RIG):
        self.K, self.R, self.t = camera_matrices(image_size, rig)
        self.image_size = image_size
        self.frame_shape = (NUM_CAMERAS, num_frames, image_size, image_size, 3)
        self.buffer = np.empty((capacity, *self.frame_shape), dtype=np.uint8)
        self.buffer[...] = BACKGROUND.astype(np.uint8)
        self._last_index: np.ndarray | None = None
        self._background = np.empty(0, dtype=np.uint8)  # background bytes, tiled to a window list's size
        # Each sphere is drawn in a square window of pixels reaching `reach` pixels either side of
        # the one holding its centre.
        self.reach = sphere_reach(self.K, self.t)
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
