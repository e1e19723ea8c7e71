"""Random CLEVR-like scenes with honest labels, built one object at a time, and rendered example sets.

Honesty rules, checked for every prefix of a sequence (so `_0`, `_1`, `_2` are all honest):
- objects stand on the floor and never interpenetrate: floor footprints (circles) stay GAP apart;
- each object lies wholly inside the frame (its bounding prism projects inside FRAME_MARGIN);
- in an object-id buffer of the frame squashed to 64x64 (the model resolution), every object keeps at
  least MIN_VISIBLE_PIXELS visible pixels and at least MIN_VISIBLE_FRACTION of its own silhouette.
A placement that breaks a rule is re-drawn; earlier objects never move.
"""

from __future__ import annotations

import math

import numpy as np

from iclevr import labels as L
from iclevr.data.world.geometry import CAMERA, MATERIALS, SIZES, SceneObject, outline
from iclevr.data.world.render import render, visibility

CHECK_SIZE = (64, 64)  # the model resolution: the 4:3 frame squashed like the course loader does
MIN_VISIBLE_PIXELS = 60  # at 64x64; the smallest whole object covers ~90 px, so this bounds occlusion
MIN_VISIBLE_FRACTION = 0.6  # of the object's own silhouette at 64x64
GAP = 0.15  # world units between footprints
FRAME_MARGIN = 0.02  # normalised frame coordinates
AREA = ((-3.4, 3.4), (-2.8, 3.6))  # x and y range objects are drawn from (the frame check trims it)
MAX_TRIES = 200


def in_frame(obj: SceneObject, margin: float = FRAME_MARGIN) -> bool:
    """True when the whole object projects inside the frame, `margin` away from its edges."""
    uv = CAMERA.project(outline(obj))
    return bool((uv >= margin).all() and (uv <= 1 - margin).all())


def honest(objects: list[SceneObject]) -> bool:
    """True when every object is visible enough at 64x64 (the last object also fits and does not overlap)."""
    new = objects[-1]
    if not in_frame(new):
        return False
    for old in objects[:-1]:
        if math.hypot(new.x - old.x, new.y - old.y) < new.footprint + old.footprint + GAP:
            return False
    visible, silhouette = visibility(objects, CHECK_SIZE)
    return bool(
        (visible >= MIN_VISIBLE_PIXELS).all() and (visible >= MIN_VISIBLE_FRACTION * np.maximum(silhouette, 1)).all()
    )


def random_object(rng: np.random.Generator, label: str) -> SceneObject:
    """An object of class `label` with random material, size, position and z-rotation."""
    colour, shape = label.split()
    return SceneObject(
        shape=shape,
        colour=colour,
        material=MATERIALS[rng.integers(len(MATERIALS))],
        size=tuple(SIZES)[rng.integers(len(SIZES))],
        x=float(rng.uniform(*AREA[0])),
        y=float(rng.uniform(*AREA[1])),
        theta=float(rng.uniform(0, math.pi / 2)),
    )


def place_sequence(rng: np.random.Generator, labels: list[str]) -> list[SceneObject]:
    """Objects for `labels`, placed one at a time so that every prefix scene is honest."""
    for _ in range(100):  # restart from scratch in the rare case a later object finds no room
        placed: list[SceneObject] = []
        for label in labels:
            for _ in range(MAX_TRIES):
                obj = random_object(rng, label)
                if honest(placed + [obj]):
                    placed.append(obj)
                    break
            else:
                break
        if len(placed) == len(labels):
            return placed
    raise RuntimeError(f"could not place {labels} honestly; the scene area is too small")


def random_labels(rng: np.random.Generator, k: int) -> list[str]:
    """k distinct class names drawn uniformly."""
    return [L.LABELS[i] for i in rng.choice(L.NUM_CLASSES, size=k, replace=False)]


def render_examples(
    n: int,
    seed: int,
    min_objects: int = 1,
    max_objects: int = 5,
    size: tuple[int, int] = (64, 48),
    supersample: int = 2,
) -> tuple[np.ndarray, list[list[str]]]:
    """n independent random honest scenes: (uint8 (n, H, W, 3), label names per image); example i is
    seeded from (seed, i), so it does not depend on n."""
    images = np.zeros((n, size[1], size[0], 3), dtype=np.uint8)
    names: list[list[str]] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 1])
        labels = random_labels(rng, int(rng.integers(min_objects, max_objects + 1)))
        objects = place_sequence(rng, labels)
        images[i] = render(objects, size, supersample)
        names.append([o.label for o in objects])
    return images, names
