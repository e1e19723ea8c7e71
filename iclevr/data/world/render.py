"""A CLEVR-like scene renderer: vectorised analytic ray casting in numpy (no Blender, no OpenGL).

Geometry (objects, camera, intersections) lives in iclevr.data.world.geometry. Here: materials and light.
Rubber is matte (Lambert); metal is shiny (dim diffuse + a colour-tinted reflection of a bright sky over a
dark floor + a sharp white highlight). Light: a key light that casts shadows (softened by jittering its
direction over the supersamples), a fill light and an ambient term. Shading is done in linear light,
box-filtered over the s x s supersamples and stored as sRGB. Rays are culled to each object's screen box.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from iclevr.data.world.geometry import CAMERA, Camera, SceneObject, intersect, normals, outline, unit

COLOUR_RGB: dict[str, tuple[int, int, int]] = {  # the CLEVR palette (sRGB)
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
FLOOR_RGB = (150, 150, 148)


def _linear(rgb) -> np.ndarray:
    """sRGB 0..255 -> linear 0..1."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


SRGB_LUT_SIZE = 8192  # linear values are quantised to 1/8192 before the sRGB table


@functools.lru_cache(maxsize=1)
def _srgb_lut() -> np.ndarray:
    c = (np.arange(SRGB_LUT_SIZE) + 0.5) / SRGB_LUT_SIZE
    s = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.round(s * 255.0).astype(np.uint8)


def _srgb_u8(lin: np.ndarray) -> np.ndarray:
    """Linear 0..1 -> sRGB uint8 (through a lookup table)."""
    i = (np.clip(lin, 0.0, 1.0) * SRGB_LUT_SIZE).astype(np.int32)
    return _srgb_lut()[np.minimum(i, SRGB_LUT_SIZE - 1)]


KEY_LIGHT = unit((-0.55, -0.35, 0.76))  # direction towards the key light (left, in front, above)
FILL_LIGHT = unit((0.7, -0.5, 0.5))
KEY, FILL, AMBIENT = 0.85, 0.22, 0.22  # light intensities (linear)
LIGHT_SPREAD = 0.06  # radius of the key-light jitter (soft shadow edges)


def _box(uv: np.ndarray, hs: int, ws: int) -> tuple[slice, slice]:
    """Row and column slices of a (hs, ws) ray grid covering normalised frame points uv (N, 2), 1 px margin."""
    c0, c1 = max(int(uv[:, 0].min() * ws) - 1, 0), min(int(math.ceil(uv[:, 0].max() * ws)) + 1, ws)
    r0, r1 = max(int(uv[:, 1].min() * hs) - 1, 0), min(int(math.ceil(uv[:, 1].max() * hs)) + 1, hs)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _primary(objects, camera: Camera, d: np.ndarray) -> np.ndarray:
    """Per-object hit distances (K, H*s, W*s) of the ray grid d (H*s, W*s, 3), inf on a miss."""
    hs, ws = d.shape[:2]
    o = np.asarray(camera.position, dtype=np.float64)
    t = np.full((len(objects), hs, ws), np.inf)
    for k, obj in enumerate(objects):
        rows, cols = _box(camera.project(outline(obj)), hs, ws)
        sub = d[rows, cols]
        if sub.size:
            t[k, rows, cols] = intersect(obj, o, sub.reshape(-1, 3)).reshape(sub.shape[:2])
    return t


def visibility(objects, size: tuple[int, int] = (64, 64), camera: Camera = CAMERA):
    """Per object: (visible pixels, silhouette pixels when alone) in a W x H object-id buffer, 1 ray/pixel."""
    if not objects:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    t = _primary(objects, camera, camera.directions(*size)).reshape(len(objects), -1)  # (K, H*W)
    hit = np.isfinite(t)
    winner = np.argmin(t, axis=0)[hit.any(axis=0)]
    return np.bincount(winner, minlength=len(objects)), hit.sum(axis=1)


def object_ids(objects, size: tuple[int, int] = (64, 64), camera: Camera = CAMERA) -> np.ndarray:
    """Object-id buffer (H, W): index of the nearest object per pixel, -1 for the floor."""
    if not objects:
        return np.full((size[1], size[0]), -1)
    t = _primary(objects, camera, camera.directions(*size))
    return np.where(np.isfinite(t).any(axis=0), np.argmin(t, axis=0), -1)


# ---- shading -------------------------------------------------------------------------------------------


def _bounding_sphere(obj: SceneObject) -> tuple[np.ndarray, float]:
    return np.array([obj.x, obj.y, obj.height / 2]), math.hypot(obj.footprint, obj.height / 2)


def _shadowed(objects, p: np.ndarray, light: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """True where the ray p + s*light (s > 0) hits an object other than the point's own (convex) one."""
    out = np.zeros(len(p), dtype=bool)
    for j, obj in enumerate(objects):
        c, rad = _bounding_sphere(obj)
        rel = c - p  # (M, 3)
        s = np.einsum("ij,ij->i", rel, light)
        near = (owner != j) & (s > -rad) & (np.einsum("ij,ij->i", rel, rel) - s * s <= rad * rad) & ~out
        if near.any():
            idx = np.nonzero(near)[0]
            out[idx] = np.isfinite(intersect(obj, p[idx], light[idx]))
    return out


def _light_dirs(width: int, height: int, s: int) -> np.ndarray:
    """Key-light direction per sub-pixel ray (N, 3): jittered over the s*s sub-samples for soft shadows."""
    if s == 1:
        return np.broadcast_to(KEY_LIGHT, (height * width, 3))
    k = np.arange(s * s)
    ang, rad = k * 2.39996, LIGHT_SPREAD * np.sqrt((k + 0.5) / (s * s))  # a golden-angle disc
    a = unit(np.cross(KEY_LIGHT, (0.0, 0.0, 1.0)))
    b = np.cross(KEY_LIGHT, a)
    dirs = KEY_LIGHT + (rad * np.cos(ang))[:, None] * a + (rad * np.sin(ang))[:, None] * b  # (s*s, 3)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    grid = dirs.reshape(s, s, 3)[None, :, None, :, :]  # (1, s, 1, s, 3) over (H, sy, W, sx)
    return np.broadcast_to(grid, (height, s, width, s, 3)).reshape(-1, 3)


@functools.lru_cache(maxsize=8)
def _frame(camera: Camera, width: int, height: int, s: int) -> tuple[np.ndarray, ...]:
    """Object-independent parts of a frame: rays, floor points, key-light dirs, lit and shadowed floor."""
    d = camera.directions(width, height, s)  # (H*s, W*s, 3)
    o = np.asarray(camera.position, dtype=np.float64)
    with np.errstate(divide="ignore"):
        t_floor = np.where(d[..., 2] < 0, -o[2] / d[..., 2], 1e3)
    p = o + t_floor[..., None] * d  # (H*s, W*s, 3)
    light = _light_dirs(width, height, s).reshape(d.shape)
    falloff = 1.0 - 0.25 * np.clip(np.hypot(p[..., 0], p[..., 1] - 1.0) / 9.0, 0, 1)
    base = _linear(FLOOR_RGB) * falloff[..., None]
    rest = AMBIENT + FILL * max(FILL_LIGHT[2], 0.0)
    lit_rgb = base * (rest + KEY * np.maximum(light[..., 2], 0.0))[..., None]
    arrays = (d, p, light, lit_rgb, base * rest)
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _shadow_box(obj: SceneObject, camera: Camera, hs: int, ws: int) -> tuple[slice, slice]:
    """Ray-grid slices covering the floor shadow of `obj` under every jittered key-light direction."""
    pts = outline(obj)
    drop = [pts - (pts[:, 2] / L[2])[:, None] * L for L in _extreme_lights()]
    return _box(camera.project(np.vstack([pts, *drop])), hs, ws)


@functools.lru_cache(maxsize=1)
def _extreme_lights() -> np.ndarray:
    """Key-light directions at the rim of the jitter disc (and the centre): bound every shadow."""
    a = unit(np.cross(KEY_LIGHT, (0.0, 0.0, 1.0)))
    b = np.cross(KEY_LIGHT, a)
    ang = np.arange(8) * math.pi / 4
    rim = KEY_LIGHT + 1.1 * LIGHT_SPREAD * (np.cos(ang)[:, None] * a + np.sin(ang)[:, None] * b)
    return np.vstack([KEY_LIGHT, rim / np.linalg.norm(rim, axis=-1, keepdims=True)])


def render(objects, size: tuple[int, int] = (128, 96), supersample: int = 2, camera: Camera = CAMERA) -> np.ndarray:
    """Render a scene to an sRGB uint8 image (H, W, 3); `size` is (W, H)."""
    return _render_prefixes(list(objects), size, supersample, camera, [len(objects)])[0]


def render_sequence(
    objects, size: tuple[int, int] = (128, 96), supersample: int = 2, camera: Camera = CAMERA
) -> list[np.ndarray]:
    """Images of objects[:1], objects[:2], ... (a scene built one object at a time); the ray casting
    of each object is shared by all of them, and each equals render(objects[:k])."""
    return _render_prefixes(list(objects), size, supersample, camera, list(range(1, len(objects) + 1)))


def _render_prefixes(objects, size, supersample: int, camera: Camera, counts: list[int]) -> list[np.ndarray]:
    width, height = size
    s = supersample
    d, p_floor, light, lit_rgb, dark_rgb = _frame(camera, width, height, s)
    hs, ws = d.shape[:2]
    t_all = _primary(objects, camera, d).reshape(len(objects), hs * ws)  # (K, N)
    lit = np.ones((hs, ws), dtype=bool)
    images, done = [], 0
    for count in counts:
        for obj in objects[done:count]:  # floor shadows, tested only where the object's shadow can fall
            rows, cols = _shadow_box(obj, camera, hs, ws)
            p, L = p_floor[rows, cols].reshape(-1, 3), light[rows, cols].reshape(-1, 3)
            if len(p):
                lit[rows, cols] &= ~np.isfinite(intersect(obj, p, L)).reshape(lit[rows, cols].shape)
        done = count
        rgb = lit_rgb.copy()
        rgb[~lit] = dark_rgb[~lit]
        rgb = rgb.reshape(-1, 3)  # (N, 3)
        if count:
            t = t_all[:count]
            idx = np.nonzero(np.isfinite(t).any(axis=0))[0]
            owner = np.argmin(t[:, idx], axis=0)
            p = np.asarray(camera.position) + t[owner, idx][:, None] * d.reshape(-1, 3)[idx]
            rgb[idx] = _shade_objects(objects[:count], owner, p, d.reshape(-1, 3)[idx], light.reshape(-1, 3)[idx])
        rgb = rgb.reshape(height, s, width, s, 3)
        rgb = sum(rgb[:, i, :, j] for i in range(s) for j in range(s)) / (s * s)  # box-filter the supersamples
        images.append(_srgb_u8(rgb))
    return images


def _shade_objects(objects, owner: np.ndarray, p: np.ndarray, d: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Linear RGB (M, 3) of object surface points p seen along d: rubber is matte, metal is shiny."""
    n = np.empty_like(p)
    base = np.empty_like(p)
    metal = np.zeros(len(p), dtype=bool)
    for k, obj in enumerate(objects):
        m = owner == k
        n[m] = normals(obj, p[m])
        base[m] = _linear(COLOUR_RGB[obj.colour])
        metal[m] = obj.material == "metal"
    lambert = np.maximum(np.einsum("ij,ij->i", n, light), 0.0)
    lit = np.ones(len(p))
    facing = np.nonzero(lambert > 0)[0]
    lit[facing] = ~_shadowed(objects, p[facing] + 1e-3 * n[facing], light[facing], owner[facing])
    irradiance = AMBIENT + KEY * lambert * lit + FILL * np.maximum(n @ FILL_LIGHT, 0.0)  # (M,)
    refl = d - 2 * np.einsum("ij,ij->i", d, n)[:, None] * n
    rl = np.maximum(np.einsum("ij,ij->i", refl, light), 0.0)
    # metal reflects a bright sky over a dark floor, tinted by its colour (no grey added: colours stay saturated)
    env = np.where(refl[:, 2] > 0, 0.3 + 0.9 * np.sqrt(np.maximum(refl[:, 2], 0.0)), 0.14)
    rubber_rgb = base * irradiance[:, None] + (0.04 * rl**8 * lit)[:, None]
    metal_rgb = base * (0.3 * irradiance + env)[:, None] + (0.9 * rl**60 * lit)[:, None]
    return np.where(metal[:, None], metal_rgb, rubber_rgb)
