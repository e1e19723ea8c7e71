"""Scene geometry: objects on a floor, a pinhole camera, and analytic ray / object intersections (numpy).

World: z is up, the floor is the plane z = 0, objects stand on it. The camera looks down at
CAMERA_ELEVATION degrees onto the middle of the floor through a 4:3 frame; any output size (64x48, 128x96,
320x240, or 64x64 = the frame squashed like the course loader does) shows the same view.

Shapes (r = the object's size radius): sphere of radius r; cube of half-side CUBE_HALF * r, rotated about z;
cylinder of radius r and height 2r, rotated about z (the rotation is invisible but kept for honesty).
Rays: origins o (N, 3) or (1, 3), unit directions d (N, 3); a miss is t = inf.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

SIZES: dict[str, float] = {"large": 0.9, "small": 0.62}  # size radius r in world units
MATERIALS: tuple[str, ...] = ("rubber", "metal")
CUBE_HALF = 0.8  # cube half-side / r (CLEVR uses 1/sqrt(2); a little larger reads better at 32x32)
EPS = 1e-4


def unit(v) -> np.ndarray:
    """v scaled to unit length."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class SceneObject:
    """One object on the floor: what it is (label), how it looks, and where it stands."""

    shape: str  # cube | sphere | cylinder
    colour: str  # one of COLOUR_RGB
    material: str = "rubber"  # rubber | metal
    size: str = "large"  # large | small
    x: float = 0.0
    y: float = 0.0
    theta: float = 0.0  # rotation about z, radians

    @property
    def label(self) -> str:
        """The class name, e.g. 'red sphere'."""
        return f"{self.colour} {self.shape}"

    @property
    def r(self) -> float:
        """The size radius in world units."""
        return SIZES[self.size]

    @property
    def footprint(self) -> float:
        """Radius of the circle the object covers on the floor (used for the no-overlap check)."""
        return self.r * CUBE_HALF * math.sqrt(2) if self.shape == "cube" else self.r

    @property
    def height(self) -> float:
        """Height of the object's top above the floor."""
        return 2 * self.r * CUBE_HALF if self.shape == "cube" else 2 * self.r


@functools.lru_cache(maxsize=16)
def _basis(position: tuple, look_at: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = unit(np.subtract(look_at, position))
    right = unit(np.cross(f, (0.0, 0.0, 1.0)))
    return f, right, np.cross(right, f)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: one ray per (sub)pixel of a W x H frame, and the projection of world points."""

    position: tuple[float, float, float]
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hfov_deg: float = 44.0
    aspect: float = 4 / 3

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward, right and up unit vectors."""
        return _basis(self.position, self.look_at)

    def directions(self, width: int, height: int, supersample: int = 1) -> np.ndarray:
        """Unit ray directions, (H*s, W*s, 3), sub-pixel centres on a regular grid."""
        f, right, up = self.basis()
        tx = math.tan(math.radians(self.hfov_deg) / 2)
        ty = tx / self.aspect
        u = ((np.arange(width * supersample) + 0.5) / (width * supersample) * 2 - 1) * tx  # (W*s,)
        v = (1 - (np.arange(height * supersample) + 0.5) / (height * supersample) * 2) * ty  # (H*s,)
        d = f + u[None, :, None] * right + v[:, None, None] * up  # (H*s, W*s, 3)
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> normalised frame coordinates (N, 2) in [0, 1] (x right, y down)."""
        f, right, up = self.basis()
        rel = np.asarray(points, dtype=np.float64) - np.asarray(self.position)
        z = rel @ f
        tx = math.tan(math.radians(self.hfov_deg) / 2)
        u = (rel @ right) / z / tx
        v = (rel @ up) / z / (tx / self.aspect)
        return np.stack([(u + 1) / 2, (1 - v) / 2], axis=-1)


CAMERA_ELEVATION = 36.0  # degrees below the horizon
CAMERA_DISTANCE = 9.5
CAMERA = Camera(
    position=(
        0.0,
        -CAMERA_DISTANCE * math.cos(math.radians(CAMERA_ELEVATION)),
        CAMERA_DISTANCE * math.sin(math.radians(CAMERA_ELEVATION)),
    ),
    look_at=(0.0, 0.3, 0.0),
)


# ---- ray / object intersections: o (N, 3) or (1, 3), d (N, 3) unit -> t (N,), inf on a miss -------------


def _local(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays in the object's frame: origin at its base centre, rotated by -theta about z."""
    c, s = math.cos(obj.theta), math.sin(obj.theta)
    ox, oy = o[:, 0] - obj.x, o[:, 1] - obj.y
    lo = np.stack([c * ox + s * oy, -s * ox + c * oy, o[:, 2]], axis=-1)
    ld = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=-1)
    return lo, ld


def _hit_sphere(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    r = obj.r
    oc = o - np.array([obj.x, obj.y, r])
    b = np.einsum("ij,ij->i", np.broadcast_to(oc, d.shape), d)
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc > 0) & (t > EPS), t, np.inf)


def _hit_cube(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    h = obj.r * CUBE_HALF
    lo, ld = _local(obj, o, d)
    lo = lo - np.array([0.0, 0.0, h])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / ld
        t1, t2 = (-h - lo) * inv, (h - lo) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((tmax >= tmin) & (tmin > EPS), tmin, np.inf)


def _hit_cylinder(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    r, top = obj.r, obj.height
    ox, oy, oz = o[:, 0] - obj.x, o[:, 1] - obj.y, o[:, 2]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    disc = b * b - a * (ox * ox + oy * oy - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        zs = oz + ts * dz
        side = np.where((disc > 0) & (ts > EPS) & (zs >= 0) & (zs <= top), ts, np.inf)
        best = side
        for zc in (top, 0.0):
            tc = (zc - oz) / dz
            px, py = ox + tc * dx, oy + tc * dy
            cap = np.where((tc > EPS) & (px * px + py * py <= r * r), tc, np.inf)
            best = np.minimum(best, cap)
    return best


HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder}


def intersect(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance along each ray to `obj` (N,), inf where the ray misses it."""
    o = np.broadcast_to(np.asarray(o, dtype=np.float64).reshape(-1, 3), d.shape)
    return HIT[obj.shape](obj, o, d)


def normals(obj: SceneObject, p: np.ndarray) -> np.ndarray:
    """Outward unit normals (N, 3) of `obj` at surface points p (N, 3)."""
    if obj.shape == "sphere":
        return (p - np.array([obj.x, obj.y, obj.r])) / obj.r
    c, s = math.cos(obj.theta), math.sin(obj.theta)
    qx, qy, qz = p[:, 0] - obj.x, p[:, 1] - obj.y, p[:, 2]
    lx, ly = c * qx + s * qy, -s * qx + c * qy
    if obj.shape == "cube":
        h = obj.r * CUBE_HALF
        q = np.stack([lx, ly, qz - h], axis=-1) / h  # (N, 3) in [-1, 1]
        axis = np.argmax(np.abs(q), axis=-1)
        n_local = np.zeros_like(q)
        n_local[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
    else:
        radial = np.hypot(lx, ly) / obj.r
        cap = np.abs(qz - obj.height) < 1e-3 * obj.r
        cap_bottom = qz < 1e-3 * obj.r
        n_local = np.stack([lx, ly, np.zeros_like(lx)], axis=-1) / np.maximum(radial * obj.r, 1e-9)[:, None]
        n_local[cap] = (0.0, 0.0, 1.0)
        n_local[cap_bottom] = (0.0, 0.0, -1.0)
    nx = c * n_local[:, 0] - s * n_local[:, 1]
    ny = s * n_local[:, 0] + c * n_local[:, 1]
    return np.stack([nx, ny, n_local[:, 2]], axis=-1)


# ---- the object's extent on screen -------------------------------------------------------------------


def outline(obj: SceneObject, sides: int = 16) -> np.ndarray:
    """Points (2*sides, 3) whose convex hull contains the object (a prism around its bounding cylinder)."""
    a = np.arange(sides) * 2 * math.pi / sides
    rad = obj.footprint / math.cos(math.pi / sides)  # circumscribed polygon
    ring = np.stack([obj.x + rad * np.cos(a), obj.y + rad * np.sin(a)], axis=-1)
    return np.concatenate([np.c_[ring, np.zeros(sides)], np.c_[ring, np.full(sides, obj.height)]])
